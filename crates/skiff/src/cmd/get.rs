//! `skiff get services|revisions|secrets|configmaps`: lists objects.

use skiff_api::object::List;

use crate::connect::ConnectArgs;
use crate::exit::{Exit, OK};
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
}

/// List Services, Revisions, Secrets or ConfigMaps.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// `services`, `revisions`, `secrets` or `configmaps`.
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

/// Runs the command.
pub async fn run(args: GetArgs) -> Result<i32, Exit> {
    let client = args.connect.client()?;
    let ns = if args.all_namespaces {
        None
    } else {
        Some(args.namespace.as_str())
    };
    match args.kind {
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
