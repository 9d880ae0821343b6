//! `skiff scale SERVICE N|auto`: a manual override of how many instances of a Service's latest
//! revision run.

use crate::connect::ConnectArgs;
use crate::exit::{Exit, OK, USAGE};

/// Override the autoscaler: run exactly N instances of a Service's latest revision (0 stops
/// them all; requests then wait and get 503). `auto` hands the decision back to the
/// autoscaler. Other revisions stay with the autoscaler either way.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// The Service.
    pub service: String,
    /// How many instances, or `auto`.
    pub replicas: String,
    /// The namespace [default: default].
    #[arg(short = 'n', long, env = "SKIFF_NAMESPACE", default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs the command.
pub async fn run(args: ScaleArgs) -> Result<i32, Exit> {
    let client = args.connect.client()?;
    if args.replicas == "auto" {
        client.clear_scale(&args.namespace, &args.service).await?;
        println!("service/{} scaled by the autoscaler", args.service);
        return Ok(OK);
    }
    let replicas: u32 = args.replicas.parse().map_err(|_| {
        Exit::new(
            USAGE,
            format!("`{}` is not a number of instances or `auto`", args.replicas),
        )
    })?;
    client
        .set_scale(&args.namespace, &args.service, replicas)
        .await?;
    println!(
        "service/{} scaled to {replicas} (manual override; `skiff scale {} auto` undoes it)",
        args.service, args.service
    );
    Ok(OK)
}
