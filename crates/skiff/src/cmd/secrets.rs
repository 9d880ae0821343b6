//! `skiff secrets create|rotate-key`: Secrets from the command line, and the key they are
//! encrypted with.

use std::collections::BTreeMap;

use skiff_api::config::{ConfigKind, SECRET_TYPE_OPAQUE};

use crate::connect::ConnectArgs;
use crate::exit::{Exit, FAILURE, INVALID, OK, USAGE};

/// Create Secrets and rotate the key they are encrypted with.
#[derive(Debug, clap::Args)]
pub struct SecretsArgs {
    #[command(subcommand)]
    pub command: SecretsCommand,
}

/// The `skiff secrets` verbs.
#[derive(Debug, clap::Subcommand)]
pub enum SecretsCommand {
    /// Create or replace a Secret from literals and files (as `kubectl create secret generic`).
    Create(CreateArgs),
    /// Re-encrypt every Secret under a new key; the old key is gone afterwards.
    RotateKey(RotateArgs),
}

/// `skiff secrets create NAME`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The Secret's name.
    pub name: String,
    /// A key and its value, `KEY=VALUE`. Repeatable.
    #[arg(long = "from-literal", value_name = "KEY=VALUE")]
    pub literals: Vec<String>,
    /// A key and the file holding its value, `KEY=PATH` (or `PATH`: the key is the file's
    /// name). Repeatable.
    #[arg(long = "from-file", value_name = "KEY=PATH")]
    pub files: Vec<String>,
    /// `Opaque` or `kubernetes.io/dockerconfigjson`.
    #[arg(long = "type", default_value = SECRET_TYPE_OPAQUE)]
    pub type_: String,
    /// The namespace [default: default].
    #[arg(short = 'n', long, env = "SKIFF_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Validate on the server without storing anything.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// `skiff secrets rotate-key`.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs the command.
pub async fn run(args: SecretsArgs) -> Result<i32, Exit> {
    match args.command {
        SecretsCommand::Create(a) => create(a).await,
        SecretsCommand::RotateKey(a) => {
            let report = a.connect.client()?.rotate_secret_key().await?;
            println!(
                "secret key rotated: {} secret{} re-encrypted under key {}",
                report.rewritten,
                if report.rewritten == 1 { "" } else { "s" },
                report.key_id
            );
            Ok(OK)
        }
    }
}

async fn create(args: CreateArgs) -> Result<i32, Exit> {
    use base64::Engine as _;
    let mut data: BTreeMap<String, String> = BTreeMap::new();
    let b64 = base64::engine::general_purpose::STANDARD;
    for lit in &args.literals {
        // Only the key is ever repeated back: the value is a secret.
        let Some((k, v)) = lit.split_once('=') else {
            return Err(Exit::new(
                USAGE,
                "--from-literal takes KEY=VALUE (no `=` found)",
            ));
        };
        data.insert(k.to_owned(), b64.encode(v));
    }
    for f in &args.files {
        let (k, path) = match f.split_once('=') {
            Some((k, p)) => (k.to_owned(), p.to_owned()),
            None => (
                std::path::Path::new(f)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                f.clone(),
            ),
        };
        let bytes =
            std::fs::read(&path).map_err(|e| Exit::new(FAILURE, format!("reading {path}: {e}")))?;
        data.insert(k, b64.encode(bytes));
    }
    if data.is_empty() {
        return Err(Exit::new(
            USAGE,
            "give the Secret's values with --from-literal KEY=VALUE or --from-file KEY=PATH",
        ));
    }
    let manifest = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": args.name, "namespace": args.namespace},
        "type": args.type_,
        "data": data,
    });
    // The same checks as the server, before anything is sent.
    let body = manifest.to_string();
    let docs = skiff_api::manifest::parse_documents(&body)
        .map_err(|p| Exit::new(INVALID, p.to_string()))?;
    if let Some(doc) = docs.first()
        && let Err(problems) = skiff_api::manifest::config_from_document(doc, ConfigKind::Secret)
    {
        for p in doc.place(problems, false) {
            eprintln!("{p}");
        }
        return Ok(INVALID);
    }
    let client = args.connect.client()?;
    let result = client
        .apply_config(
            ConfigKind::Secret,
            &args.namespace,
            &args.name,
            body,
            "application/json",
            args.dry_run,
        )
        .await?;
    let dry = if args.dry_run { " (dry run)" } else { "" };
    println!("secret/{} {result}{dry}", args.name);
    Ok(OK)
}
