//! `skiff validate -f FILE`: checks manifests offline with the server's own validator.

use skiff_api::manifest::parse_objects;

use super::{display_name, read_input};
use crate::exit::{Exit, INVALID, OK};

/// Check manifests without a daemon, with the same rules the server applies.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// A YAML or JSON file (many documents allowed), or `-` for standard input. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
}

/// Prints every problem of `text` as `FILE[ (document N)]: problem` (and, with `warnings`,
/// every warning as `Warning: FILE[ (document N)]: warning`); returns how many problems
/// and documents. `apply` leaves the warnings to the server, which says them on applying.
pub fn report(file: &str, text: &str, warnings: bool) -> (usize, usize) {
    let (problems, kinds) = report_kinds(file, text, warnings);
    (problems, kinds.values().sum())
}

/// [`report`], counting the valid documents by kind (`Service`, `Job`, `Secret`,
/// `ConfigMap`).
pub fn report_kinds(
    file: &str,
    text: &str,
    warnings: bool,
) -> (usize, std::collections::BTreeMap<&'static str, usize>) {
    let mut kinds = std::collections::BTreeMap::new();
    match parse_objects(text) {
        Err(p) => {
            eprintln!("{file}: {p}");
            (1, kinds)
        }
        Ok(input) => {
            let multi = input.documents.len() > 1;
            let mut problems = 0;
            for (doc, result) in &input.documents {
                let where_ = if multi {
                    format!("{file} (document {})", doc.index + 1)
                } else {
                    file.to_owned()
                };
                if let Ok(valid) = result {
                    let kind = valid.kind();
                    *kinds.entry(kind).or_default() += 1;
                }
                if let Ok(valid) = result
                    && warnings
                {
                    for w in valid.warnings() {
                        eprintln!("Warning: {where_}: {w}");
                    }
                }
                if let Err(ps) = result {
                    for p in ps {
                        eprintln!("{where_}: {p}");
                        problems += 1;
                    }
                }
            }
            (problems, kinds)
        }
    }
}

/// Runs the command.
pub fn run(args: ValidateArgs) -> Result<i32, Exit> {
    let mut total = 0;
    for path in &args.files {
        let text = read_input(path)?;
        let (problems, kinds) = report_kinds(display_name(path), &text, true);
        if problems == 0 {
            let counts: Vec<String> = kinds
                .iter()
                .map(|(k, n)| format!("{n} valid {k}{}", if *n == 1 { "" } else { "s" }))
                .collect();
            println!("{}: {}", display_name(path), counts.join(", "));
        }
        total += problems;
    }
    if total > 0 {
        eprintln!("{total} problem{} found", if total == 1 { "" } else { "s" });
        Ok(INVALID)
    } else {
        Ok(OK)
    }
}
