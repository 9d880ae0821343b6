//! `skiff images pull|import|ls|inspect|rm|prune`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use skiff_api::wire::{LayerStatus, PullEvent};
use skiff_client::Client;

use crate::connect::ConnectArgs;
use crate::exit::{self, Exit, OK};
use crate::output::{self, Format};

/// Manage images in the daemon's content store.
#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    pub command: ImagesCommand,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Image subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ImagesCommand {
    /// Pull an image from its registry, with progress per layer.
    Pull {
        /// The image, e.g. `127.0.0.1:5000/hello:v1` or `nginx` (= docker.io/library/nginx:latest).
        reference: String,
    },
    /// Import an OCI image layout (directory or tar) or a `docker save` archive.
    Import {
        /// The directory or archive.
        path: PathBuf,
        /// The name to give the image (required when the input names none).
        #[arg(long)]
        tag: Option<String>,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Show an image: layers, config, where it came from.
    Inspect {
        /// A reference or digest.
        reference: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value = "yaml")]
        output: Format,
    },
    /// Remove images no revision uses (their content goes at the next prune).
    Rm {
        /// References or digests.
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Remove every image no revision uses, and all content no image needs.
    Prune,
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn human(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// Renders pull events: a bar per layer on a terminal, a line per state change otherwise.
struct Render {
    tty: bool,
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    printed: HashMap<String, LayerStatus>,
}

impl Render {
    fn new() -> Self {
        Render {
            tty: std::io::stderr().is_terminal(),
            multi: MultiProgress::new(),
            bars: HashMap::new(),
            printed: HashMap::new(),
        }
    }

    fn event(&mut self, ev: &PullEvent) {
        match ev {
            PullEvent::Resolved {
                reference,
                digest,
                registry,
                layers,
            } => {
                eprintln!(
                    "{reference}: resolved to {digest} ({} layers, from {registry})",
                    layers.len()
                );
                if self.tty {
                    let style = ProgressStyle::with_template("{prefix:.bold} {bar:30} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar());
                    for l in layers {
                        let bar = self.multi.add(ProgressBar::new(l.size));
                        bar.set_style(style.clone());
                        bar.set_prefix(short(&l.digest).to_owned());
                        self.bars.insert(l.digest.clone(), bar);
                    }
                }
            }
            PullEvent::Layer {
                digest,
                status,
                done,
                total,
            } => {
                if let Some(bar) = self.bars.get(digest) {
                    bar.set_position(*done);
                    match status {
                        LayerStatus::Cached => bar.finish_with_message("already present"),
                        LayerStatus::Unpacking => bar.set_message("unpacking"),
                        LayerStatus::Done => bar.finish_with_message("done"),
                        LayerStatus::Downloading => {}
                    }
                } else if !self.tty
                    && self.printed.get(digest) != Some(status)
                    && *status != LayerStatus::Downloading
                {
                    eprintln!("  {} {:?} ({})", short(digest), status, human(*total));
                    self.printed.insert(digest.clone(), *status);
                } else if !self.tty && !self.printed.contains_key(digest) {
                    eprintln!(
                        "  {} downloading ({} of {})",
                        short(digest),
                        human(*done),
                        human(*total)
                    );
                    self.printed.insert(digest.clone(), *status);
                }
            }
            PullEvent::Done { .. } | PullEvent::Error { .. } => {
                for bar in self.bars.values() {
                    if !bar.is_finished() {
                        bar.abandon();
                    }
                }
            }
        }
    }
}

fn outcome(last: PullEvent) -> Result<i32, Exit> {
    match last {
        PullEvent::Done {
            image,
            seconds,
            bytes,
        } => {
            println!(
                "{}: {} ({}, {} downloaded in {:.1}s)",
                image
                    .references
                    .first()
                    .map(String::as_str)
                    .unwrap_or("image"),
                image.pinned(),
                human(image.size),
                human(bytes),
                seconds
            );
            Ok(OK)
        }
        PullEvent::Error { message, reason } => Err(Exit::new(
            if reason == "not_found" {
                exit::NOT_FOUND
            } else if reason == "unauthorized" {
                exit::UNAUTHORIZED
            } else {
                exit::FAILURE
            },
            message,
        )),
        _ => Err(Exit::new(
            exit::FAILURE,
            "the daemon ended the pull without a result",
        )),
    }
}

/// Packs a directory (an OCI layout) into a temporary tar for upload.
fn tar_directory(dir: &Path) -> Result<tempfile::NamedTempFile, Exit> {
    let file = tempfile::NamedTempFile::new()
        .map_err(|e| Exit::new(exit::FAILURE, format!("creating a temporary file: {e}")))?;
    let mut builder = tar::Builder::new(
        file.reopen()
            .map_err(|e| Exit::new(exit::FAILURE, e.to_string()))?,
    );
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", dir)
        .and_then(|()| builder.finish())
        .map_err(|e| Exit::new(exit::FAILURE, format!("packing {}: {e}", dir.display())))?;
    Ok(file)
}

/// Runs the command.
pub async fn run(args: ImagesArgs) -> Result<i32, Exit> {
    let client: Client = args.connect.client()?;
    match args.command {
        ImagesCommand::Pull { reference } => {
            let mut render = Render::new();
            let last = client.pull_image(&reference, |ev| render.event(ev)).await?;
            outcome(last)
        }
        ImagesCommand::Import { path, tag } => {
            let packed;
            let upload: &Path = if path.is_dir() {
                packed = tar_directory(&path)?;
                packed.path()
            } else {
                &path
            };
            let mut render = Render::new();
            let last = client
                .import_image(upload, tag.as_deref(), |ev| render.event(ev))
                .await?;
            outcome(last)
        }
        ImagesCommand::Ls { output } => {
            let images = client.list_images().await?;
            if output != Format::Table {
                print!("{}", output::render(&images, output)?);
                return Ok(OK);
            }
            if images.is_empty() {
                eprintln!("no images");
                return Ok(OK);
            }
            let mut t = output::table(&[
                "REFERENCE",
                "DIGEST",
                "SIZE",
                "LAYERS",
                "SOURCE",
                "IN USE",
                "CREATED",
            ]);
            for v in &images {
                let i = &v.image;
                t.add_row(vec![
                    i.references.join(","),
                    short(i.index_digest.as_deref().unwrap_or(&i.digest)).to_owned(),
                    human(i.size),
                    i.layers.len().to_string(),
                    i.source.clone(),
                    if v.in_use { "yes".into() } else { "no".into() },
                    output::age(&i.created_at),
                ]);
            }
            output::print_table(&t);
            Ok(OK)
        }
        ImagesCommand::Inspect { reference, output } => {
            let v = client.inspect_image(&reference).await?;
            let f = if output == Format::Table {
                Format::Yaml
            } else {
                output
            };
            print!("{}", output::render(&v, f)?);
            Ok(OK)
        }
        ImagesCommand::Rm { references } => {
            let mut code = OK;
            for r in &references {
                match client.remove_image(r).await {
                    Ok(v) => println!("removed {}", v.image.references.join(",")),
                    Err(e) => {
                        let e = Exit::from(e);
                        eprintln!("error: {}", e.message);
                        code = code.max(e.code);
                    }
                }
            }
            Ok(code)
        }
        ImagesCommand::Prune => {
            let r = client.prune_images().await?;
            for i in &r.images {
                println!("removed {i}");
            }
            println!(
                "freed {} ({} blobs, {} layers)",
                human(r.bytes),
                r.blobs,
                r.layers
            );
            Ok(OK)
        }
    }
}
