//! `--micro N`: skiff's start steps timed one by one, in isolation, N times each, with the
//! runtime's own functions; plus what tokio's timer does to the runtime's 5 ms readiness poll.
//! A diagnostic for "where does the time go", not part of the comparison.

use std::fmt::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use skiff_runtime::netns::NetNs;
use skiff_runtime::spec::{self, ContainerConfig};
use skiff_runtime::{logs, rootfs};

use skiff_bench_runtime::stats::{Summary, summarize};

use crate::ctx::{Ctx, MEMORY_LIMIT};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[derive(Default)]
struct Steps {
    netns_create: Vec<f64>,
    netns_remove: Vec<f64>,
    etc_files: Vec<f64>,
    overlay: Vec<f64>,
    user: Vec<f64>,
    spec: Vec<f64>,
    fifos: Vec<f64>,
    refused: Vec<f64>,
    sleep5: Vec<f64>,
    sleep1: Vec<f64>,
}

pub async fn run(ctx: &Ctx, work: &Path, n: usize) -> anyhow::Result<String> {
    let base = work.join("micro");
    std::fs::create_dir_all(&base).context("creating the micro dir")?;
    let mut st = Steps::default();
    for i in 0..n {
        let dir = base.join(format!("m{i}"));
        std::fs::create_dir_all(&dir)?;

        let ns_path = dir.join("netns");
        let t = Instant::now();
        let ns = NetNs::create(&ns_path).context("NetNs::create")?;
        st.netns_create.push(ms(t.elapsed()));

        // A probe attempt against a closed port: connector thread hop, setns, connect refused.
        let t = Instant::now();
        let r = ctx.connector.connect(ns.handle(), 1).await;
        st.refused.push(ms(t.elapsed()));
        anyhow::ensure!(r.is_err(), "port 1 accepted in a fresh namespace");

        let t = Instant::now();
        rootfs::write_etc_files(&dir.join("etc"), "micro").context("etc files")?;
        st.etc_files.push(ms(t.elapsed()));

        let (r_dir, upper, wdir) = (dir.join("rootfs"), dir.join("upper"), dir.join("work"));
        let t = Instant::now();
        for d in [&r_dir, &upper, &wdir] {
            std::fs::create_dir_all(d)?;
        }
        rootfs::mount_overlay(&ctx.lowers, &upper, &wdir, &r_dir).context("overlay")?;
        st.overlay.push(ms(t.elapsed()));

        let t = Instant::now();
        let user = rootfs::resolve_user(&r_dir, "").context("user")?;
        st.user.push(ms(t.elapsed()));

        let t = Instant::now();
        let config = ContainerConfig {
            hostname: format!("micro-{i}"),
            rootfs: r_dir.clone(),
            read_only_rootfs: false,
            args: ctx.args.clone(),
            env: vec![format!("HOME={}", user.home)],
            cwd: "/".into(),
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.groups.clone(),
            capabilities: spec::capabilities(&[], &[]),
            seccomp: true,
            netns: ns_path.clone(),
            cgroups_path: format!("/skiff/{}-micro", ctx.prefix),
            memory_limit: Some(MEMORY_LIMIT),
            cpu_quota: None,
            cpu_shares: None,
            pids_limit: 1024,
            etc_dir: dir.join("etc"),
            tmp_size: 32 << 20,
            volumes: vec![],
        };
        let spec = spec::build(&config).context("spec")?;
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&spec)?)?;
        st.spec.push(ms(t.elapsed()));

        let t = Instant::now();
        let out = logs::fifo(&dir.join("stdout")).context("fifo")?;
        let err = logs::fifo(&dir.join("stderr")).context("fifo")?;
        st.fifos.push(ms(t.elapsed()));
        drop((out, err));

        rootfs::unmount(&r_dir).context("unmount")?;
        let t = Instant::now();
        NetNs::remove(&ns_path).context("NetNs::remove")?;
        drop(ns);
        st.netns_remove.push(ms(t.elapsed()));
        std::fs::remove_dir_all(&dir)?;

        let t = Instant::now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        st.sleep5.push(ms(t.elapsed()));
        let t = Instant::now();
        tokio::time::sleep(Duration::from_millis(1)).await;
        st.sleep1.push(ms(t.elapsed()));
    }
    let _ = std::fs::remove_dir_all(&base);

    let mut o = String::new();
    let _ = writeln!(
        o,
        "### Diagnostic: skiff's start steps in isolation ({n} times each, ms)\n"
    );
    let _ = writeln!(o, "| Step | p50 | p90 | p99 | min | max | mean |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    let row = |o: &mut String, name: &str, s: Summary| {
        let _ = writeln!(
            o,
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            s.p50, s.p90, s.p99, s.min, s.max, s.mean
        );
    };
    row(
        &mut o,
        "`NetNs::create` (thread, unshare, `lo` up, bind mount, open)",
        summarize(&st.netns_create),
    );
    row(&mut o, "`write_etc_files`", summarize(&st.etc_files));
    row(
        &mut o,
        "3 dirs + `mount_overlay` (fsopen/fsconfig/fsmount)",
        summarize(&st.overlay),
    );
    row(
        &mut o,
        "`resolve_user` on the mounted rootfs",
        summarize(&st.user),
    );
    row(
        &mut o,
        "`spec::build` + pretty JSON + write `config.json`",
        summarize(&st.spec),
    );
    row(&mut o, "two log FIFOs", summarize(&st.fifos));
    row(
        &mut o,
        "one TCP probe attempt, refused (connector hop + setns + connect)",
        summarize(&st.refused),
    );
    row(
        &mut o,
        "(teardown) `NetNs::remove`",
        summarize(&st.netns_remove),
    );
    row(
        &mut o,
        "tokio `sleep(5 ms)` (the readiness poll before first ready)",
        summarize(&st.sleep5),
    );
    row(&mut o, "tokio `sleep(1 ms)`", summarize(&st.sleep1));
    Ok(o)
}
