//! Reading an instance container's cgroup (usage, OOM kills, throttling) and removing what a
//! runtime leaves behind. cgroup v1 (this host's hybrid layout) and v2 are both read.

use std::path::{Path, PathBuf};

pub use skiff_api::wire::Usage;

const ROOT: &str = "/sys/fs/cgroup";
const V1: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "systemd",
    "net_cls",
    "net_prio",
    "perf_event",
    "hugetlb",
    "rdma",
    "misc",
];

fn is_v2() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn keyed(p: &Path, key: &str) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|r| r.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

fn v1(controller: &str, cgroup: &str) -> PathBuf {
    Path::new(ROOT)
        .join(controller)
        .join(cgroup.trim_start_matches('/'))
}

/// Reads the usage of the cgroup at `cgroup` (the absolute `cgroupsPath` of the spec).
pub fn usage(cgroup: &str) -> Usage {
    if is_v2() {
        let d = Path::new(ROOT).join(cgroup.trim_start_matches('/'));
        let limit = std::fs::read_to_string(d.join("memory.max"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        return Usage {
            cpu_nanos: keyed(&d.join("cpu.stat"), "usage_usec") * 1000,
            memory_bytes: read_u64(&d.join("memory.current")),
            memory_peak_bytes: read_u64(&d.join("memory.peak")),
            memory_limit_bytes: limit,
            pids: read_u64(&d.join("pids.current")),
            oom_kills: keyed(&d.join("memory.events"), "oom_kill"),
            throttled_periods: keyed(&d.join("cpu.stat"), "nr_throttled"),
            pids_limit_hits: keyed(&d.join("pids.events"), "max"),
        };
    }
    let mem = v1("memory", cgroup);
    let limit = read_u64(&mem.join("memory.limit_in_bytes"));
    Usage {
        cpu_nanos: read_u64(&v1("cpuacct", cgroup).join("cpuacct.usage")),
        memory_bytes: read_u64(&mem.join("memory.usage_in_bytes")),
        memory_peak_bytes: read_u64(&mem.join("memory.max_usage_in_bytes")),
        // An unlimited v1 cgroup reports a page-rounded i64::MAX.
        memory_limit_bytes: if limit >= (1 << 62) { 0 } else { limit },
        pids: read_u64(&v1("pids", cgroup).join("pids.current")),
        oom_kills: keyed(&mem.join("memory.oom_control"), "oom_kill"),
        throttled_periods: keyed(&v1("cpu", cgroup).join("cpu.stat"), "nr_throttled"),
        pids_limit_hits: keyed(&v1("pids", cgroup).join("pids.events"), "max"),
    }
}

/// Every directory of `cgroup` that exists, in each hierarchy.
pub fn dirs(cgroup: &str) -> Vec<PathBuf> {
    if is_v2() {
        let d = Path::new(ROOT).join(cgroup.trim_start_matches('/'));
        return if d.is_dir() { vec![d] } else { vec![] };
    }
    let mut out: Vec<PathBuf> = V1
        .iter()
        .map(|c| v1(c, cgroup))
        .filter(|d| d.is_dir())
        .collect();
    let unified = Path::new(ROOT)
        .join("unified")
        .join(cgroup.trim_start_matches('/'));
    if unified.is_dir() {
        out.push(unified);
    }
    out
}

/// Removes `cgroup` in every hierarchy (it must hold no process), and then its parent when
/// that is empty and named `parent`.
pub fn remove(cgroup: &str) {
    for d in dirs(cgroup) {
        let _ = std::fs::remove_dir(&d);
    }
}

/// Thaws a frozen cgroup by writing its freezer state, as `runc resume` does, without a
/// `runc` process (v1 `freezer.state` = `THAWED`, v2 `cgroup.freeze` = `0`). Returns false
/// when the cgroup has no freezer file here (the caller then asks the runtime).
pub fn thaw(cgroup: &str) -> bool {
    let rel = cgroup.trim_start_matches('/');
    let (file, value) = if is_v2() {
        (Path::new(ROOT).join(rel).join("cgroup.freeze"), "0")
    } else {
        (
            Path::new(ROOT)
                .join("freezer")
                .join(rel)
                .join("freezer.state"),
            "THAWED",
        )
    };
    file.exists() && std::fs::write(&file, value).is_ok()
}

/// Child cgroups of `parent` (e.g. `/skiff`) in any hierarchy, by name.
pub fn children(parent: &str) -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    for d in dirs(parent) {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    names.insert(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
    }
    names.into_iter().collect()
}
