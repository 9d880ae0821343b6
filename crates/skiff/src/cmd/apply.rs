//! `skiff apply -f FILE`: makes the daemon's Services match the manifests.

use skiff_api::manifest::{Document, Object, parse_objects};
use skiff_api::{ErrorCode, FieldPath, Problem};
use skiff_client::ClientError;

use super::{display_name, read_input};
use crate::connect::ConnectArgs;
use crate::exit::{self, Exit, INVALID, OK};

/// Create or update Services, Secrets and ConfigMaps from manifests (YAML or JSON).
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// A YAML or JSON file (many documents allowed), or `-` for standard input. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    /// Validate on the server and show what would change, without storing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// The namespace of manifests that name none [default: default].
    #[arg(short = 'n', long, env = "SKIFF_NAMESPACE")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Places the server's problems in the user's file: the CLI sent the document re-encoded as
/// JSON, so the server's positions are in that body, not in the file.
fn place(doc: &Document, mut problems: Vec<Problem>) -> Vec<Problem> {
    for p in &mut problems {
        let at = doc.positions.locate(&FieldPath::parse(&p.path), p.kind);
        p.line = at.map(|a| a.0);
        p.column = at.map(|a| a.1);
        p.document = None;
    }
    problems
}

/// Runs the command.
pub async fn run(args: ApplyArgs) -> Result<i32, Exit> {
    // Read and validate everything first: nothing is applied from input with a problem.
    let mut inputs = Vec::new();
    let mut invalid = 0;
    for path in &args.files {
        let text = read_input(path)?;
        let (problems, _) = super::validate::report(display_name(path), &text, false);
        invalid += problems;
        if problems == 0
            && let Ok(parsed) = parse_objects(&text)
        {
            inputs.push((display_name(path).to_owned(), parsed));
        }
    }
    if invalid > 0 {
        eprintln!(
            "nothing applied: {invalid} problem{} found",
            if invalid == 1 { "" } else { "s" }
        );
        return Ok(INVALID);
    }
    let client = args.connect.client()?;
    let suffix = if args.dry_run { " (dry run)" } else { "" };
    let mut code = OK;
    for (file, parsed) in inputs {
        let multi = parsed.documents.len() > 1;
        for (doc, result) in parsed.documents {
            let Ok(valid) = result else { continue };
            let where_ = if multi {
                format!("{file} (document {})", doc.index + 1)
            } else {
                file.clone()
            };
            let namespace = match (&valid.manifest_namespace(), &args.namespace) {
                (Some(m), Some(flag)) if m != flag => {
                    eprintln!("{where_}: metadata.namespace is `{m}` but --namespace is `{flag}`");
                    code = code.max(INVALID);
                    continue;
                }
                (Some(m), _) => (*m).to_owned(),
                (None, Some(flag)) => flag.clone(),
                (None, None) => skiff_api::validate::DEFAULT_NAMESPACE.to_owned(),
            };
            let body = serde_json::to_string(&doc.value)
                .map_err(|e| Exit::new(exit::FAILURE, e.to_string()))?;
            let ns_suffix = if namespace == skiff_api::validate::DEFAULT_NAMESPACE {
                String::new()
            } else {
                format!(" -n {namespace}")
            };
            let valid = match valid {
                Object::Service(s) => s,
                Object::Job(_) => {
                    eprintln!("{where_}: Jobs are not handled by this build");
                    code = code.max(INVALID);
                    continue;
                }
                Object::PingSource(_) | Object::Broker(_) | Object::Trigger(_) => {
                    let (path, what) = match &valid {
                        Object::PingSource(_) => ("pingsources", "pingsource"),
                        Object::Broker(_) => ("brokers", "broker"),
                        _ => ("triggers", "trigger"),
                    };
                    let name = valid.name().unwrap_or_default().to_owned();
                    match client
                        .apply_eventing(
                            path,
                            &namespace,
                            &name,
                            body,
                            "application/json",
                            args.dry_run,
                        )
                        .await
                    {
                        Ok((result, warnings)) => {
                            for w in &warnings {
                                eprintln!("Warning: {where_}: {w}");
                            }
                            println!("{what}/{name}{ns_suffix} {result}{suffix}");
                        }
                        Err(e) => {
                            if let Some(stop) = report(&where_, &doc, e, &mut code) {
                                return Ok(stop);
                            }
                        }
                    }
                    continue;
                }
                Object::Config(c) => {
                    let what = c.kind.as_str().to_lowercase();
                    match client
                        .apply_config(
                            c.kind,
                            &namespace,
                            &c.name,
                            body,
                            "application/json",
                            args.dry_run,
                        )
                        .await
                    {
                        Ok(result) => println!("{what}/{}{ns_suffix} {result}{suffix}", c.name),
                        Err(ClientError::Api { body, .. })
                            if body.code == ErrorCode::Invalid && !body.details.is_empty() =>
                        {
                            eprintln!("{where_}: refused by the server:");
                            for p in place(&doc, body.details) {
                                eprintln!("  {p}");
                            }
                            code = code.max(INVALID);
                        }
                        Err(e) => {
                            let e = Exit::from(e);
                            eprintln!("{where_}: {}", e.message);
                            if e.code == exit::UNREACHABLE || e.code == exit::UNAUTHORIZED {
                                return Ok(e.code);
                            }
                            code = code.max(e.code);
                        }
                    }
                    continue;
                }
            };
            match client
                .apply_service(
                    &namespace,
                    valid.name(),
                    body,
                    "application/json",
                    args.dry_run,
                )
                .await
            {
                Ok(applied) => {
                    for w in &applied.warnings {
                        eprintln!("Warning: {where_}: {w}");
                    }
                    let rev = applied
                        .created_revision
                        .map(|r| format!(" (revision {r})"))
                        .unwrap_or_default();
                    let ns = if namespace == skiff_api::validate::DEFAULT_NAMESPACE {
                        String::new()
                    } else {
                        format!(" -n {namespace}")
                    };
                    println!(
                        "service/{}{ns} {}{rev}{suffix}",
                        applied.service.metadata.name, applied.result
                    );
                }
                Err(ClientError::Api { body, .. })
                    if body.code == ErrorCode::Invalid && !body.details.is_empty() =>
                {
                    eprintln!("{where_}: refused by the server:");
                    for p in place(&doc, body.details) {
                        eprintln!("  {p}");
                    }
                    code = code.max(INVALID);
                }
                Err(e) => {
                    let e = Exit::from(e);
                    eprintln!("{where_}: {}", e.message);
                    if e.code == exit::UNREACHABLE || e.code == exit::UNAUTHORIZED {
                        return Ok(e.code);
                    }
                    code = code.max(e.code);
                }
            }
        }
    }
    Ok(code)
}

/// Prints why the server refused a document (its problems placed in the file when it says
/// them); returns the exit code to stop with when nothing else can be applied.
fn report(
    where_: &str,
    doc: &skiff_api::manifest::Document,
    e: ClientError,
    code: &mut i32,
) -> Option<i32> {
    match e {
        ClientError::Api { body, .. }
            if body.code == ErrorCode::Invalid && !body.details.is_empty() =>
        {
            eprintln!("{where_}: refused by the server:");
            for p in place(doc, body.details) {
                eprintln!("  {p}");
            }
            *code = (*code).max(INVALID);
            None
        }
        e => {
            let e = Exit::from(e);
            eprintln!("{where_}: {}", e.message);
            if e.code == exit::UNREACHABLE || e.code == exit::UNAUTHORIZED {
                return Some(e.code);
            }
            *code = (*code).max(e.code);
            None
        }
    }
}
