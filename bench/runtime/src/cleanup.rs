//! Removing everything the benchmark created, whatever state it stopped in, and checking that
//! nothing is left: containers in either runc root, mounts under the working directory (overlays
//! and pinned network namespaces), cgroups named with the run's prefix, the working directory.
//!
//! The sweep is synchronous and needs no tokio runtime, so it also runs from `Drop`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use skiff_runtime::{cgroups, instance::CGROUP_PARENT, rootfs};

#[derive(Debug)]
pub struct Cleanup {
    /// The run's working directory (everything on disk lives below it).
    pub work: PathBuf,
    /// runc roots used (skiff's and the floor's).
    pub runc_roots: Vec<PathBuf>,
    /// Every container id and cgroup name of this run starts with it.
    pub prefix: String,
    /// Whether `/skiff` existed in the memory hierarchy before the run (then it is left alone).
    parent_existed: bool,
    done: bool,
}

fn runc_ids(root: &Path) -> Vec<String> {
    if !root.exists() {
        return Vec::new();
    }
    Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["list", "--quiet"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

impl Cleanup {
    pub fn new(work: PathBuf, runc_roots: Vec<PathBuf>, prefix: String) -> Self {
        Cleanup {
            parent_existed: !cgroups::dirs(CGROUP_PARENT).is_empty(),
            work,
            runc_roots,
            prefix,
            done: false,
        }
    }

    fn our_cgroups(&self) -> Vec<String> {
        cgroups::children(CGROUP_PARENT)
            .into_iter()
            .filter(|c| c.starts_with(&self.prefix))
            .collect()
    }

    /// Removes everything; safe to call more than once.
    pub fn sweep(&mut self) {
        for root in &self.runc_roots {
            for id in runc_ids(root) {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(root)
                    .args(["delete", "--force", &id])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        for m in rootfs::mounts_under(&self.work) {
            let _ = rootfs::unmount(&m);
        }
        for c in self.our_cgroups() {
            cgroups::remove(&format!("{CGROUP_PARENT}/{c}"));
        }
        if !self.parent_existed {
            // Only removes it when empty: a concurrent skiff's instances keep it.
            cgroups::remove(CGROUP_PARENT);
        }
        if self.work.exists() {
            let _ = std::fs::remove_dir_all(&self.work);
        }
        self.done = true;
    }

    /// What is left behind, described (empty when nothing is): containers in the runc roots,
    /// mounts under the working directory, cgroups with the run's prefix, and (with `dir`)
    /// the working directory itself. Called before the sweep it checks the benchmark's own
    /// stop paths (skiff's `stop`, the floor's teardown); after it, the final state.
    pub fn leftovers(&self, dir: bool) -> Vec<String> {
        let mut left = Vec::new();
        for root in &self.runc_roots {
            for id in runc_ids(root) {
                left.push(format!("container `{id}` in runc root {}", root.display()));
            }
        }
        let work = self.work.display().to_string();
        for m in rootfs::mounts_under(&self.work) {
            left.push(format!("mount {}", m.display()));
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for l in mounts.lines().filter(|l| l.contains(&work)) {
            left.push(format!("mountinfo line: {l}"));
        }
        for c in self.our_cgroups() {
            for d in cgroups::dirs(&format!("{CGROUP_PARENT}/{c}")) {
                left.push(format!("cgroup {}", d.display()));
            }
        }
        if dir && self.work.exists() {
            left.push(format!("directory {}", self.work.display()));
        }
        left
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.done {
            self.sweep();
        }
    }
}
