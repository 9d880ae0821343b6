//! `skiff describe service NAME`: one Service, its revisions, traffic, conditions, scaling
//! (with cold starts and the last decisions) and instances. `skiff describe revision NAME`:
//! one revision, its images and conditions. `skiff describe job NAME`: its template, schedule
//! and recent executions. `skiff describe execution NAME`: its conditions, counts and tasks.
//! `skiff describe secret NAME`: its type, keys and sizes, never a value.

use crate::connect::ConnectArgs;
use crate::exit::{Exit, OK};
use crate::output;

/// What to describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A Service (also: services, svc, ksvc).
    #[value(alias = "services", alias = "svc", alias = "ksvc")]
    Service,
    /// A revision (also: revisions, rev).
    #[value(alias = "revisions", alias = "rev")]
    Revision,
    /// A Secret (also: secrets): its type, keys and sizes, never a value.
    #[value(alias = "secrets")]
    Secret,
    /// A Cloud Run Job (also: jobs): its template, schedule and recent executions.
    #[value(alias = "jobs")]
    Job,
    /// An execution of a Job (also: executions): conditions, counts, each task.
    #[value(alias = "executions")]
    Execution,
    /// A Knative Broker (also: brokers): its address and delivery settings.
    #[value(alias = "brokers")]
    Broker,
    /// A Knative Trigger (also: triggers): filters, subscriber, delivery, why not ready.
    #[value(alias = "triggers")]
    Trigger,
    /// A Knative PingSource (also: pingsources): schedule, sink, last and next runs.
    #[value(alias = "pingsources")]
    Pingsource,
}

/// Show a Service, a revision, a Job, an execution or a Secret in detail.
#[derive(Debug, clap::Args)]
pub struct DescribeArgs {
    /// `service`, `revision`, `job`, `execution`, `broker`, `trigger`, `pingsource` or
    /// `secret`.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// The namespace [default: default].
    #[arg(short = 'n', long, env = "SKIFF_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs the command.
pub async fn run(args: DescribeArgs) -> Result<i32, Exit> {
    let client = args.connect.client()?;
    let eventing = match args.kind {
        Kind::Broker => Some(super::eventing::EventingKind::Brokers),
        Kind::Trigger => Some(super::eventing::EventingKind::Triggers),
        Kind::Pingsource => Some(super::eventing::EventingKind::Pingsources),
        _ => None,
    };
    if let Some(kind) = eventing {
        return super::eventing::describe(&client, kind, &args.name, &args.namespace).await;
    }
    if args.kind == Kind::Revision {
        let r = client.get_revision(&args.namespace, &args.name).await?;
        print!("{}", output::describe_revision(&r));
        return Ok(OK);
    }
    if args.kind == Kind::Job {
        print!(
            "{}",
            super::jobs::describe_job(&client, &args.namespace, &args.name).await?
        );
        return Ok(OK);
    }
    if args.kind == Kind::Execution {
        let e = client.get_execution(&args.namespace, &args.name).await?;
        print!("{}", output::describe_execution(&e));
        return Ok(OK);
    }
    if args.kind == Kind::Secret {
        let s = client.get_secret(&args.namespace, &args.name).await?;
        print!("{}", output::describe_secret(&s));
        return Ok(OK);
    }
    let service = client.get_service(&args.namespace, &args.name).await?;
    let revisions = client
        .list_revisions(Some(&args.namespace), Some(&args.name))
        .await?;
    let instances = client.instances(&args.namespace, &args.name).await?;
    let scale = client.scale(&args.namespace, &args.name).await?;
    print!("{}", output::describe_service(&service, &revisions));
    if service.status.rollout.is_some() {
        let report = client.rollout(&args.namespace, &args.name).await?;
        print!("{}", output::describe_rollout(&report));
    }
    print!("{}", output::describe_scaling(&scale));
    print!("{}", output::describe_instances(&instances));
    Ok(OK)
}
