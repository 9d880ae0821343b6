//! `skiff delete service NAME`: removes a Service and its revisions.

use crate::connect::ConnectArgs;
use crate::exit::{Exit, OK};

/// What to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A Service (also: services, svc, ksvc).
    #[value(alias = "services", alias = "svc", alias = "ksvc")]
    Service,
}

/// Delete Services with all their revisions.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// `service`.
    pub kind: Kind,
    /// The Services' names.
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
    let Kind::Service = args.kind;
    let mut code = OK;
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
