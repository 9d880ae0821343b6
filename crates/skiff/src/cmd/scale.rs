//! `skiff scale SERVICE N`: a manual override of how many instances run.

use crate::connect::ConnectArgs;
use crate::exit::{Exit, OK};

/// Run N instances of a Service's latest revision (a manual override; the autoscaler will
/// decide this by itself once it exists). 0 stops them all.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// The Service.
    pub service: String,
    /// How many instances.
    pub replicas: u32,
    /// The namespace [default: default].
    #[arg(short = 'n', long, env = "SKIFF_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs the command.
pub async fn run(args: ScaleArgs) -> Result<i32, Exit> {
    let client = args.connect.client()?;
    client
        .set_scale(&args.namespace, &args.service, args.replicas)
        .await?;
    println!("service/{} scaled to {}", args.service, args.replicas);
    Ok(OK)
}
