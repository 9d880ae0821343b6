//! Reading an instance container's cgroup (usage, OOM kills, throttling) and removing what a
//! runtime leaves behind. cgroup v1 (this host's hybrid layout) and v2 are both read.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

/// Resource usage of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// CPU time used, in nanoseconds.
    pub cpu_nanos: u64,
    /// Memory in use now, in bytes.
    pub memory_bytes: u64,
    /// Highest memory use, in bytes.
    pub memory_peak_bytes: u64,
    /// The memory limit, in bytes (0: none).
    pub memory_limit_bytes: u64,
    /// Processes and threads now.
    pub pids: u64,
    /// Times the OOM killer killed a process here.
    pub oom_kills: u64,
    /// CFS periods in which the container was throttled.
    pub throttled_periods: u64,
    /// Times a fork or thread creation failed at the pids limit.
    pub pids_limit_hits: u64,
}

impl Usage {
    /// Adds another container's usage (for an instance's total).
    pub fn add(&mut self, o: &Usage) {
        self.cpu_nanos += o.cpu_nanos;
        self.memory_bytes += o.memory_bytes;
        self.memory_peak_bytes += o.memory_peak_bytes;
        self.memory_limit_bytes += o.memory_limit_bytes;
        self.pids += o.pids;
        self.oom_kills += o.oom_kills;
        self.throttled_periods += o.throttled_periods;
        self.pids_limit_hits += o.pids_limit_hits;
    }
}

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
