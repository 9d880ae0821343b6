//! `skiff get services|revisions|jobs|executions|brokers|triggers|pingsources|secrets|configmaps`:
//! lists objects.

use skiff_api::job::Execution;
use skiff_api::object::List;

use crate::connect::ConnectArgs;
use crate::exit::{Exit, OK, USAGE};
use crate::output::{self, Format};

/// What to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Services (also: service, svc, ksvc).
    #[value(alias = "service", alias = "svc", alias = "ksvc")]
    Services,
    /// Revisions (also: revision, rev).
    #[value(alias = "revision", alias = "rev")]
    Revisions,
    /// Secrets (also: secret): keys and sizes, never values.
    #[value(alias = "secret")]
    Secrets,
    /// ConfigMaps (also: configmap, cm).
    #[value(alias = "configmap", alias = "cm")]
    Configmaps,
    /// Cloud Run Jobs (also: job).
    #[value(alias = "job")]
    Jobs,
    /// Executions of Jobs, newest first (also: execution).
    #[value(alias = "execution")]
    Executions,
    /// Knative Brokers (also: broker).
    #[value(alias = "broker")]
    Brokers,
    /// Knative Triggers (also: trigger).
    #[value(alias = "trigger")]
    Triggers,
    /// Knative PingSources (also: pingsource).
    #[value(alias = "pingsource")]
    Pingsources,
}

/// List Services, Revisions, Jobs, Executions, Secrets or ConfigMaps.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// `services`, `revisions`, `jobs`, `executions`, `secrets` or `configmaps`.
    pub kind: Kind,
    /// Show only this one.
    pub name: Option<String>,
    /// The namespace [default: default].
    #[arg(short = 'n', long, env = "SKIFF_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// For revisions: only those of this Service.
    #[arg(long)]
    pub service: Option<String>,
    /// For executions: only those of this Job.
    #[arg(long)]
    pub job: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// A `v1` list.
fn config_list<T>(kind: &str, items: Vec<T>) -> List<T> {
    List {
        api_version: skiff_api::config::CORE_API_VERSION.to_owned(),
        kind: kind.to_owned(),
        items,
    }
}

/// A `run.googleapis.com/v1` list.
fn jobs_list<T>(kind: &str, items: Vec<T>) -> List<T> {
    List {
        api_version: skiff_api::job::JOBS_API_VERSION.to_owned(),
        kind: kind.to_owned(),
        items,
    }
}

/// Prints executions as `format` asks (`one`: a single one was asked for by name).
pub fn print_executions(
    items: &[Execution],
    format: Format,
    one: bool,
    namespace: &str,
) -> Result<(), Exit> {
    match format {
        Format::Table if items.is_empty() => {
            eprintln!("no executions found in namespace {namespace}")
        }
        Format::Table => output::print_table(&output::executions_table(items)),
        f if one => print!("{}", output::render(&items[0], f)?),
        f => print!(
            "{}",
            output::render(&jobs_list("ExecutionList", items.to_vec()), f)?
        ),
    }
    Ok(())
}

/// Runs the command.
pub async fn run(args: GetArgs) -> Result<i32, Exit> {
    let client = args.connect.client()?;
    let ns = if args.all_namespaces {
        None
    } else {
        Some(args.namespace.as_str())
    };
    match args.kind {
        Kind::Brokers | Kind::Triggers | Kind::Pingsources => {
            let kind = match args.kind {
                Kind::Brokers => super::eventing::EventingKind::Brokers,
                Kind::Triggers => super::eventing::EventingKind::Triggers,
                _ => super::eventing::EventingKind::Pingsources,
            };
            return super::eventing::get(
                &client,
                kind,
                args.name.as_deref(),
                &args.namespace,
                args.all_namespaces,
                args.output,
            )
            .await;
        }
        Kind::Jobs => {
            let items = match &args.name {
                Some(name) => vec![client.get_job(&args.namespace, name).await?],
                None => client.list_jobs(ns).await?,
            };
            match (args.output, &args.name) {
                (Format::Table, _) if items.is_empty() => eprintln!(
                    "no jobs found{}",
                    ns.map(|n| format!(" in namespace {n}")).unwrap_or_default()
                ),
                (Format::Table, _) => {
                    output::print_table(&output::jobs_table(&items, args.all_namespaces))
                }
                (f, Some(_)) => print!("{}", output::render(&items[0], f)?),
                (f, None) => print!("{}", output::render(&jobs_list("JobList", items), f)?),
            }
        }
        Kind::Executions => {
            if args.all_namespaces {
                return Err(Exit::new(
                    USAGE,
                    "executions are listed per namespace: use -n NAMESPACE (and --job JOB)",
                ));
            }
            let items = match &args.name {
                Some(name) => vec![client.get_execution(&args.namespace, name).await?],
                None => {
                    client
                        .list_executions(&args.namespace, args.job.as_deref())
                        .await?
                }
            };
            print_executions(&items, args.output, args.name.is_some(), &args.namespace)?;
        }
        Kind::Secrets => {
            let items = match &args.name {
                Some(name) => vec![client.get_secret(&args.namespace, name).await?],
                None => client.list_secrets(ns).await?,
            };
            match (args.output, &args.name) {
                (Format::Table, _) if items.is_empty() => eprintln!(
                    "no secrets found{}",
                    ns.map(|n| format!(" in namespace {n}")).unwrap_or_default()
                ),
                (Format::Table, _) => {
                    output::print_table(&output::secrets_table(&items, args.all_namespaces))
                }
                (f, Some(_)) => print!("{}", output::render(&items[0], f)?),
                (f, None) => print!("{}", output::render(&config_list("SecretList", items), f)?),
            }
        }
        Kind::Configmaps => {
            let items = match &args.name {
                Some(name) => vec![client.get_config_map(&args.namespace, name).await?],
                None => client.list_config_maps(ns).await?,
            };
            match (args.output, &args.name) {
                (Format::Table, _) if items.is_empty() => eprintln!(
                    "no configmaps found{}",
                    ns.map(|n| format!(" in namespace {n}")).unwrap_or_default()
                ),
                (Format::Table, _) => {
                    output::print_table(&output::config_maps_table(&items, args.all_namespaces))
                }
                (f, Some(_)) => print!("{}", output::render(&items[0], f)?),
                (f, None) => print!(
                    "{}",
                    output::render(&config_list("ConfigMapList", items), f)?
                ),
            }
        }
        Kind::Services => {
            let services = match &args.name {
                Some(name) => vec![client.get_service(&args.namespace, name).await?],
                None => client.list_services(ns).await?,
            };
            match (args.output, &args.name) {
                (Format::Table, _) => {
                    if services.is_empty() {
                        eprintln!(
                            "no services found{}",
                            ns.map(|n| format!(" in namespace {n}")).unwrap_or_default()
                        );
                    } else {
                        let revisions = client.list_revisions(ns, args.name.as_deref()).await?;
                        output::print_table(&output::services_table(
                            &services,
                            &revisions,
                            args.all_namespaces,
                        ));
                    }
                }
                (f, Some(_)) => print!("{}", output::render(&services[0], f)?),
                (f, None) => print!(
                    "{}",
                    output::render(&List::new("ServiceList", services), f)?
                ),
            }
        }
        Kind::Revisions => {
            let revisions = match &args.name {
                Some(name) => vec![client.get_revision(&args.namespace, name).await?],
                None => client.list_revisions(ns, args.service.as_deref()).await?,
            };
            match (args.output, &args.name) {
                (Format::Table, _) => {
                    if revisions.is_empty() {
                        eprintln!(
                            "no revisions found{}",
                            ns.map(|n| format!(" in namespace {n}")).unwrap_or_default()
                        );
                    } else {
                        output::print_table(&output::revisions_table(
                            &revisions,
                            args.all_namespaces,
                        ));
                    }
                }
                (f, Some(_)) => print!("{}", output::render(&revisions[0], f)?),
                (f, None) => print!(
                    "{}",
                    output::render(&List::new("RevisionList", revisions), f)?
                ),
            }
        }
    }
    Ok(OK)
}
