//! Case A: an instance started through `Runtime::start`, timed by the runtime itself
//! (`start_to_ready_ms`) and by the wall clock from calling `start()` to observing `ready`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use skiff_runtime::instance::{Phase, container_id};

use crate::ctx::{Ctx, PORT, READY_TIMEOUT};

/// One start of case A. Times in ms; phases are measured from the wall-clock start.
#[derive(Debug, Clone)]
pub struct SkiffSample {
    /// The runtime's own figure (`InstanceStatus::start_to_ready_ms`).
    pub runtime_ms: f64,
    /// `start()` called → `ready` observed on the status channel.
    pub wall_ms: f64,
    /// `start()` called → `start()` returned (instance dir, network namespace, /etc files).
    pub start_returned_ms: f64,
    /// `start()` returned → `runc run -d` began (overlay, user lookup, spec, FIFOs).
    pub before_runc_ms: f64,
    /// `runc run -d` itself.
    pub runc_ms: f64,
    /// `runc run -d` returned → `ready` observed.
    pub after_runc_ms: f64,
    /// With `--watch-port`: `runc run -d` returned → the port first accepted (1 ms poller).
    pub port_open_after_runc_ms: Option<f64>,
    /// Not timed: `stop()` called → the instance is gone.
    pub stop_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn once(ctx: &Ctx, n: usize) -> anyhow::Result<SkiffSample> {
    let id = format!("{}-s{n}", ctx.prefix);
    let plan = ctx.plan(&id);
    let t0 = Instant::now();
    let inst = ctx
        .rt
        .start(plan)
        .await
        .with_context(|| format!("starting instance {id}"))?;
    let t_returned = Instant::now();
    let watcher = ctx.watch_port.then(|| {
        let (connector, netns) = (ctx.connector.clone(), inst.netns());
        tokio::spawn(async move {
            loop {
                if connector.connect(netns.clone(), PORT).await.is_ok() {
                    return Instant::now();
                }
                skiff_bench_runtime::floor::precise_sleep(skiff_bench_runtime::floor::POLL).await;
            }
        })
    });
    let mut rx = inst.subscribe();
    let waited = tokio::time::timeout(READY_TIMEOUT, async {
        loop {
            {
                let s = rx.borrow_and_update();
                if s.ready {
                    return Some((Instant::now(), s.clone()));
                }
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    })
    .await;
    let (t_ready, status) = match waited {
        Ok(Some(r)) => r,
        other => {
            if let Some(w) = &watcher {
                w.abort();
            }
            let status = inst.status();
            let _ = ctx.rt.stop(&id).await;
            bail!(
                "instance {id} {}: {status:#?}",
                if other.is_err() {
                    format!("not ready within {READY_TIMEOUT:?}")
                } else {
                    "ended before it was ready".to_owned()
                }
            );
        }
    };
    // The port is open now, so the watcher's next attempt succeeds.
    let port_open = match watcher {
        Some(w) => {
            let abort = w.abort_handle();
            match tokio::time::timeout(Duration::from_secs(1), w).await {
                Ok(r) => Some(r.context("the port watcher")?),
                Err(_) => {
                    abort.abort();
                    bail!("the port watcher saw no open port within 1 s of ready");
                }
            }
        }
        None => None,
    };
    let runtime_ms = status
        .start_to_ready_ms
        .context("ready, but the runtime reported no start_to_ready_ms")?;
    let (run_began, run_returned) = ctx
        .oci
        .take_run(&container_id(&id, 0))
        .context("runc run -d was not timed")?;

    let t_stop = Instant::now();
    ctx.rt
        .stop(&id)
        .await
        .with_context(|| format!("stopping instance {id}"))?;
    let stop_ms = ms(t_stop.elapsed());
    if inst.status().phase != Phase::Stopped || ctx.rt.instance(&id).is_some() {
        bail!("instance {id} is not gone after stop: {:#?}", inst.status());
    }
    Ok(SkiffSample {
        runtime_ms,
        wall_ms: ms(t_ready - t0),
        start_returned_ms: ms(t_returned - t0),
        before_runc_ms: ms(run_began.saturating_duration_since(t_returned)),
        runc_ms: ms(run_returned - run_began),
        after_runc_ms: ms(t_ready - run_returned),
        port_open_after_runc_ms: port_open.map(|p| ms(p.saturating_duration_since(run_returned))),
        stop_ms,
    })
}
