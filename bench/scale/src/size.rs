//! One size: a fresh daemon with `n` idle Services, then its memory, idle CPU, apply
//! latency, cold starts and a `kill -9` restart, in that order.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use skiff_test_utils::TestDaemon;

use crate::http::{self, Api};
use crate::{Settings, progress};

/// The image every Service runs (busybox httpd, imported once per daemon).
pub const IMAGE: &str = "skiff.local/scale-bench/httpd:v1";
/// The port busybox httpd listens on (`PORT`, the Knative default).
const PORT: u16 = 8080;
/// The daemon's flags besides its addresses and data directory.
pub const DAEMON_ARGS: [&str; 6] = [
    "--log-format",
    "json",
    "--shutdown-grace-period-seconds",
    "5",
    // busybox httpd as PID 1 ignores SIGTERM: a cold-start sample's teardown would otherwise
    // wait out the default 10 s termination grace (not a measured figure).
    "--termination-grace-period-seconds",
    "1",
];

/// A Service that runs nothing until a request comes: `initial-scale: "0"` (its revision
/// pins the image's digest and starts no instance), scale to zero (the default). Its
/// `timeoutSeconds: 1` keeps the stop of a cold-started busybox httpd (PID 1, no SIGTERM
/// handler, so it ends at the SIGKILL after the grace period) short.
fn manifest(name: &str) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": { "name": name },
        "spec": { "template": {
            "metadata": { "annotations": { "autoscaling.knative.dev/initial-scale": "0" } },
            "spec": {
                "timeoutSeconds": 1,
                "containers": [{
                    "image": IMAGE,
                    "ports": [{ "containerPort": PORT }],
                    "resources": { "limits": { "memory": "64Mi" } },
                }],
            },
        }},
    })
}

fn host(name: &str) -> String {
    format!("{name}.default.localhost")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q` quantile (nearest rank) of `v`; NaN when empty.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// p50, p90 and max of a set of samples, with the samples.
fn summary(samples: &[f64]) -> Value {
    json!({
        "n": samples.len(),
        "p50": quantile(samples, 0.5),
        "p90": quantile(samples, 0.9),
        "max": quantile(samples, 1.0),
        "samples": samples,
    })
}

/// The daemon's CPU time so far (user + system), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("/proc/PID/stat")?;
    let rest = stat.rsplit_once(')').context("/proc/PID/stat: no `)`")?.1;
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|s| s.parse().unwrap_or(0))
        .collect();
    // After the command: state (3), …, utime (14), stime (15).
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// How many instance directories the daemon has (`DATA/run/instances/*`).
fn instances(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("run/instances")).map_or(0, |d| d.count())
}

/// Waits up to `max` for `check` to hold, polling every 20 ms.
async fn until<F, Fut>(what: &str, max: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    skiff_test_utils::wait_for(what, Duration::from_millis(20), max, || {
        let f = check();
        async move { f.await.ok().filter(|ok| *ok).map(|_| ()) }
    })
    .await
}

/// What one size measured, as JSON.
pub async fn run(bin: &Path, n: usize, s: &Settings) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut d = TestDaemon::start_with(&bin.display().to_string(), &DAEMON_ARGS).await?;
    let result = measure(&mut d, n, s).await;
    if result.is_err() {
        let log = d.log_text();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        progress(format!(
            "daemon log, last lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    progress(format!("{n} Services: stopping the daemon (SIGTERM)"));
    d.cleanup().await.context("stopping the daemon")?;
    let mut v = result?;
    v["totalSeconds"] = json!(started.elapsed().as_secs_f64());
    Ok(v)
}

async fn measure(d: &mut TestDaemon, n: usize, s: &Settings) -> anyhow::Result<Value> {
    let client = d.client();
    let api = Api::new(d.api(), d.token())?;
    let ingress: SocketAddr = d.ingress().parse().context("the ingress address")?;
    let data_dir = d.data_dir().to_path_buf();
    let apply = |name: String| {
        let client = client.clone();
        async move {
            let t = Instant::now();
            client
                .apply_service(
                    "default",
                    Some(&name),
                    manifest(&name).to_string(),
                    "application/json",
                    false,
                )
                .await
                .with_context(|| format!("applying {name}"))?;
            anyhow::Ok(t.elapsed())
        }
    };
    let delete = |name: String| {
        let client = client.clone();
        async move {
            let t = Instant::now();
            client
                .delete_service("default", &name, false)
                .await
                .with_context(|| format!("deleting {name}"))?;
            anyhow::Ok(t.elapsed())
        }
    };

    // The image, then one Service applied and deleted, so that what the first apply
    // allocates once is not counted per Service.
    let layout = data_dir
        .parent()
        .context("the daemon's directory")?
        .join("layout");
    let image = skiff_test_utils::images::busybox_httpd_image()?;
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        image.write_oci_layout(&layout, "v1")?;
        let out = d.cli(&[
            "images",
            "import",
            &layout.display().to_string(),
            "--tag",
            IMAGE,
        ]);
        if !out.status.success() {
            bail!(
                "skiff images import: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    })?;
    // A new process on the same data directory: what the import allocated (decompression,
    // hashing) is not in the reading before the Services.
    d.stop()
        .await
        .context("stopping the daemon after the import")?;
    d.restart()
        .await
        .context("starting the daemon after the import")?;
    let pid = d.pid().context("the daemon's pid")?;
    apply("sc-warmup".into()).await?;
    until("the warm-up revision to be pinned", s.max_wait, || {
        let api = api.clone();
        async move { Ok(api.pinned(Some("sc-warmup")).await? == 1) }
    })
    .await?;
    delete("sc-warmup".into()).await?;
    tokio::time::sleep(s.settle).await;
    let rss_before = d.memory()?.0;

    // N idle Services.
    progress(format!("{n} Services: creating them"));
    let names: Vec<String> = (0..n).map(|i| format!("sc-idle-{i:05}")).collect();
    let t_create = Instant::now();
    let mut create_ms = Vec::with_capacity(n);
    for name in &names {
        create_ms.push(ms(apply(name.clone()).await?));
    }
    let create_s = t_create.elapsed().as_secs_f64();
    until(
        "every idle revision to be pinned",
        s.max_wait * 4,
        || async { Ok(api.pinned(None).await? >= n) },
    )
    .await?;
    let pinned_s = t_create.elapsed().as_secs_f64();
    anyhow::ensure!(
        instances(&data_dir) == 0,
        "idle Services run instances: {} in {}/run/instances",
        instances(&data_dir),
        data_dir.display()
    );
    tokio::time::sleep(s.settle.saturating_sub(s.idle_window)).await;
    let cpu0 = cpu_time(pid)?;
    let t_idle = Instant::now();
    tokio::time::sleep(s.idle_window).await;
    let idle_cpu_percent =
        (cpu_time(pid)? - cpu0).as_secs_f64() / t_idle.elapsed().as_secs_f64() * 100.0;
    let (rss_after, hwm) = d.memory()?;
    let per_service = (rss_after as f64 - rss_before as f64) / n as f64;
    progress(format!(
        "{n} Services: created in {create_s:.1} s; RSS {:.1} → {:.1} MiB, {:.1} KiB per Service; idle CPU {idle_cpu_percent:.1}%",
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
        per_service / 1024.0
    ));

    // Apply latency at this size: a new Service, timed, then deleted (not timed), so the
    // size stays n to n + 1.
    progress(format!("{n} Services: {} timed applies", s.applies));
    let (mut apply_ms, mut delete_ms) = (Vec::new(), Vec::new());
    for i in 0..s.applies {
        let name = format!("sc-apply-{i:03}");
        apply_ms.push(ms(apply(name.clone()).await?));
        delete_ms.push(ms(delete(name).await?));
    }

    // Cold starts at this size, each on a Service of its own created just before (untimed)
    // and deleted after, once its instance is gone.
    progress(format!("{n} Services: {} cold starts", s.colds));
    let mut cold_ms = Vec::new();
    let mut colds = Vec::new();
    for i in 0..s.colds {
        let name = format!("sc-cold-{i:03}");
        apply(name.clone()).await?;
        until(
            "the cold Service to be pinned and routed",
            s.max_wait,
            || {
                let (api, name) = (api.clone(), name.clone());
                async move {
                    Ok(api.pinned(Some(&name)).await? == 1
                        && api.scale(&name).await?["routed"].as_bool() == Some(true))
                }
            },
        )
        .await?;
        let a = http::get(ingress, &host(&name), s.max_wait).await?;
        let ttfb = ms(a.first_byte - a.sent);
        let scale = api.scale(&name).await?;
        let cold_starts = scale["coldStarts"].as_u64().unwrap_or(0);
        if a.status != 200 || cold_starts != 1 {
            bail!(
                "{name}: answered {} after {cold_starts} cold start(s); expected 200 after 1",
                a.status
            );
        }
        cold_ms.push(ttfb);
        colds.push(json!({
            "service": name,
            "firstByteMs": ttfb,
            "routerColdStartMs": scale["lastColdStartSeconds"].as_f64().map(|s| s * 1000.0),
        }));
        delete(name).await?;
        until("the cold instance to be gone", s.max_wait, || async {
            Ok(instances(&data_dir) == 0)
        })
        .await?;
    }

    let restart = restart(d, &names, ingress, &api, s).await?;
    let restart_summary = format!(
        "ready {:.2} s, ingress {:.2} s, all routed {:.2} s",
        restart["readyS"].as_f64().unwrap_or(f64::NAN),
        restart["ingressAnswerS"].as_f64().unwrap_or(f64::NAN),
        restart["allRoutedS"].as_f64().unwrap_or(f64::NAN)
    );
    progress(format!(
        "{n} Services: apply p50 {:.1} ms, cold start p50 {:.1} ms, restart: {restart_summary}",
        quantile(&apply_ms, 0.5),
        quantile(&cold_ms, 0.5)
    ));
    Ok(json!({
        "services": n,
        "create": {
            "seconds": create_s,
            "secondsUntilAllPinned": pinned_s,
            "applyMs": summary(&create_ms),
            "applyMsLast10Percent": summary(&create_ms[n - n.div_ceil(10)..]),
        },
        "memory": {
            "rssBeforeKiB": rss_before / 1024,
            "rssAfterKiB": rss_after / 1024,
            "peakKiB": hwm / 1024,
            "perServiceKiB": per_service / 1024.0,
        },
        "idleCpuPercent": idle_cpu_percent,
        "idleWindowSeconds": s.idle_window.as_secs_f64(),
        "applyMs": summary(&apply_ms),
        "deleteMs": summary(&delete_ms),
        "coldStartFirstByteMs": summary(&cold_ms),
        "coldStarts": colds,
        "restart": restart,
    }))
}

/// `kill -9`, then the daemon again on the same data directory and addresses; from the
/// moment it is spawned: its `endpoints.json`, the ingress's first answer (a 404 for a host
/// no Service has), the first answer for the last-created Service (a cold start), and every
/// Service's revision `routed` in the scale API.
async fn restart(
    d: &mut TestDaemon,
    names: &[String],
    ingress: SocketAddr,
    api: &Api,
    s: &Settings,
) -> anyhow::Result<Value> {
    let n = names.len();
    anyhow::ensure!(
        instances(d.data_dir()) == 0,
        "instances run before the restart"
    );
    progress(format!("{n} Services: kill -9 and restart"));
    d.kill9();
    let t0 = Instant::now();
    let since = move |at: Instant| at.saturating_duration_since(t0).as_secs_f64();
    let poll = Duration::from_millis(2);
    let unknown = tokio::spawn({
        let max = s.max_wait;
        async move { http::first_answer(ingress, "sc-nobody.default.localhost", poll, max).await }
    });
    let known = tokio::spawn({
        let (h, max) = (host(names.last().context("no Service")?), s.max_wait);
        async move { http::first_answer(ingress, &h, poll, max).await }
    });
    // Every Service's scale, by a few workers in turn, until each shows its revision routed.
    let next = Arc::new(AtomicUsize::new(0));
    let names_arc: Arc<Vec<String>> = Arc::new(names.to_vec());
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (next, names, api, max) = (next.clone(), names_arc.clone(), api.clone(), s.max_wait);
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = names.get(i) else {
                    return anyhow::Ok(seen);
                };
                let deadline = Instant::now() + max;
                loop {
                    if let Ok(sc) = api.scale(name).await
                        && sc["routed"].as_bool() == Some(true)
                    {
                        seen.push(Instant::now());
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("{name} is not routed {max:?} after the restart");
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    d.restart().await.context("restarting the daemon")?;
    let ready = since(Instant::now());
    let unknown = unknown.await.context("the unknown-host probe")??;
    let known = known.await.context("the known-host probe")??;
    let mut routed = Vec::new();
    for w in workers {
        routed.extend(w.await.context("a routed worker")??);
    }
    routed.sort();
    let all_routed = since(*routed.last().context("nothing routed")?);
    let rss = d.memory()?.0;
    Ok(json!({
        "signal": "SIGKILL",
        "readyS": ready,
        "ingressAnswerS": since(unknown.first_byte),
        "ingressAnswerStatus": unknown.status,
        "knownHostAnswerS": since(known.first_byte),
        "knownHostStatus": known.status,
        "firstRoutedS": since(routed[0]),
        "allRoutedS": all_routed,
        "rssAfterKiB": rss / 1024,
    }))
}
