//! Facts about the machine, for the report.

use std::path::Path;
use std::process::Command;

#[derive(Debug, Clone)]
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub mem_gib: f64,
    pub runc: String,
    pub fs: String,
}

fn first_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    })
}

/// The filesystem type of `path`, by name for the common ones.
fn fs_type(path: &Path) -> String {
    match rustix::fs::statfs(path) {
        Ok(s) => match s.f_type as u64 {
            0xEF53 => "ext4".into(),
            0x0102_1994 => "tmpfs".into(),
            0x5846_5342 => "xfs".into(),
            0x9123_683E => "btrfs".into(),
            0x794C_7630 => "overlayfs".into(),
            other => format!("fs type {other:#x}"),
        },
        Err(e) => format!("unknown ({e})"),
    }
}

/// The first line of `/proc/loadavg` (1, 5, 15 minutes).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub fn gather(work: &Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = first_field(&meminfo, "MemTotal")
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0.0);
    let runc = Command::new("runc")
        .arg("--version")
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let mut lines = text.lines();
            let version = lines
                .next()
                .unwrap_or("")
                .trim_start_matches("runc version ")
                .to_owned();
            let rest: Vec<String> = lines
                .filter(|l| l.starts_with("spec") || l.starts_with("libseccomp"))
                .map(str::to_owned)
                .collect();
            if rest.is_empty() {
                version
            } else {
                format!("{version} ({})", rest.join(", "))
            }
        })
        .unwrap_or_else(|e| format!("unknown ({e})"));
    Machine {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "?".into()),
        cpu_model: first_field(&cpuinfo, "model name").unwrap_or_else(|| "?".into()),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem_gib: mem_kib / (1024.0 * 1024.0),
        runc,
        fs: fs_type(work),
    }
}
