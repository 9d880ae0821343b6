//! `skiff delete service|job|secret|configmap NAME`: removes a Service (with its revisions),
//! a Job (with its executions), a Secret or a ConfigMap.

use crate::connect::ConnectArgs;
use crate::exit::{Exit, OK};

/// What to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A Service (also: services, svc, ksvc).
    #[value(alias = "services", alias = "svc", alias = "ksvc")]
    Service,
    /// A Secret (also: secrets).
    #[value(alias = "secrets")]
    Secret,
    /// A ConfigMap (also: configmaps, cm).
    #[value(alias = "configmaps", alias = "cm")]
    Configmap,
    /// A Cloud Run Job with its executions (also: jobs); its running tasks are stopped.
    #[value(alias = "jobs")]
    Job,
    /// A Knative Broker (also: brokers).
    #[value(alias = "brokers")]
    Broker,
    /// A Knative Trigger (also: triggers); its pending deliveries are dropped.
    #[value(alias = "triggers")]
    Trigger,
    /// A Knative PingSource (also: pingsources).
    #[value(alias = "pingsources")]
    Pingsource,
}

/// Delete Services with all their revisions, Jobs with their executions, Secrets or
/// ConfigMaps.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// `service`, `job`, `broker`, `trigger`, `pingsource`, `secret` or `configmap`.
    pub kind: Kind,
    /// The names.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// The namespace [default: default].
    #[arg(short = 'n', long, env = "SKIFF_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Show what would be deleted without deleting.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs the command.
pub async fn run(args: DeleteArgs) -> Result<i32, Exit> {
    let client = args.connect.client()?;
    if args.kind == Kind::Job {
        return super::jobs::delete_jobs(&client, &args.namespace, &args.names, args.dry_run).await;
    }
    let eventing = match args.kind {
        Kind::Broker => Some(super::eventing::EventingKind::Brokers),
        Kind::Trigger => Some(super::eventing::EventingKind::Triggers),
        Kind::Pingsource => Some(super::eventing::EventingKind::Pingsources),
        _ => None,
    };
    if let Some(kind) = eventing {
        let mut code = OK;
        for name in &args.names {
            if args.dry_run {
                println!("{}/{name} would be deleted (dry run)", kind.singular());
                continue;
            }
            match super::eventing::delete(&client, kind, name, &args.namespace).await {
                Ok(_) => {}
                Err(e) => {
                    eprintln!("{name}: {}", e.message);
                    code = code.max(e.code);
                }
            }
        }
        return Ok(code);
    }
    let config = match args.kind {
        Kind::Service | Kind::Job | Kind::Broker | Kind::Trigger | Kind::Pingsource => None,
        Kind::Secret => Some(skiff_api::config::ConfigKind::Secret),
        Kind::Configmap => Some(skiff_api::config::ConfigKind::ConfigMap),
    };
    let mut code = OK;
    if let Some(kind) = config {
        for name in &args.names {
            if args.dry_run {
                println!(
                    "{}/{name} would be deleted (dry run)",
                    kind.as_str().to_lowercase()
                );
                continue;
            }
            match client.delete_config(kind, &args.namespace, name).await {
                Ok(()) => println!("{}/{name} deleted", kind.as_str().to_lowercase()),
                Err(e) => {
                    let e = Exit::from(e);
                    eprintln!("error: {}", e.message);
                    code = code.max(e.code);
                }
            }
        }
        return Ok(code);
    }
    for name in &args.names {
        match client
            .delete_service(&args.namespace, name, args.dry_run)
            .await
        {
            Ok(deleted) => {
                let revs = if deleted.deleted_revisions.is_empty() {
                    String::new()
                } else {
                    format!(" (with revisions {})", deleted.deleted_revisions.join(", "))
                };
                let dry = if args.dry_run { " (dry run)" } else { "" };
                println!("service/{} deleted{revs}{dry}", deleted.name);
            }
            Err(e) => {
                let e = Exit::from(e);
                eprintln!("error: {}", e.message);
                code = code.max(e.code);
            }
        }
    }
    Ok(code)
}
