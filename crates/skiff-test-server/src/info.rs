//! `GET /info`: what the process sees of its container, read from `/proc`, `/sys` and
//! `/dev`, as one JSON object.
//!
//! Every probe is best-effort: a file that is missing or unreadable becomes `null` (or an
//! empty list), never an error, because "missing" is often exactly what a runtime test
//! asserts.
//!
//! # Design
//!
//! cgroup limits are looked up in two places, in this order: under the process's own cgroup
//! path from `/proc/self/cgroup` (right on a host, or in a container without a cgroup
//! namespace whose `/sys/fs/cgroup` shows the whole tree), then directly under the
//! hierarchy's mount (right inside a container with a cgroup namespace, or where runc
//! bind-mounts the container's own cgroup there). `cgroup_paths` says which file answered.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::json::Json;
use crate::sys;

/// The files whose existence `/info` reports (Knative's `TestMustHaveFiles` and
/// `TestShouldHaveFiles` list, plus a few more).
pub const FILES: &[&str] = &[
    "/dev/fd",
    "/dev/full",
    "/dev/null",
    "/dev/ptmx",
    "/dev/random",
    "/dev/stdin",
    "/dev/stdout",
    "/dev/stderr",
    "/dev/tty",
    "/dev/urandom",
    "/dev/zero",
    "/dev/console",
    "/dev/shm",
    "/proc/self/fd/0",
    "/proc/self/fd/1",
    "/proc/self/fd/2",
    "/tmp",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/hostname",
];

/// cgroup v1 limits: (key in the report, controller, file).
const CGROUP_V1: &[(&str, &str, &str)] = &[
    (
        "memory/memory.limit_in_bytes",
        "memory",
        "memory.limit_in_bytes",
    ),
    ("cpu/cpu.cfs_quota_us", "cpu", "cpu.cfs_quota_us"),
    ("cpu/cpu.cfs_period_us", "cpu", "cpu.cfs_period_us"),
    ("cpu/cpu.shares", "cpu", "cpu.shares"),
    ("pids/pids.max", "pids", "pids.max"),
];

/// cgroup v2 limits: key and file are the same.
const CGROUP_V2: &[&str] = &["memory.max", "cpu.max", "cpu.weight", "pids.max"];

/// Where cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Counts write probes, so that concurrent `/info` requests use different file names.
static PROBE: AtomicU64 = AtomicU64::new(0);

/// The whole `/info` report.
pub fn report() -> Json {
    let env: BTreeMap<String, String> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let args = std::env::args_os().map(|a| a.to_string_lossy().into_owned());
    let status = proc_status();
    let cgroup = cgroup_report();
    Json::obj([
        (
            "env",
            Json::obj(env.into_iter().map(|(k, v)| (k, Json::Str(v)))),
        ),
        ("args", Json::strs(args)),
        ("uid", Json::UInt(sys::uid().into())),
        ("gid", Json::UInt(sys::gid().into())),
        (
            "groups",
            match sys::groups() {
                Ok(groups) => Json::Arr(groups.into_iter().map(|g| Json::UInt(g.into())).collect()),
                Err(_) => Json::Null,
            },
        ),
        (
            "cwd",
            Json::opt_str(
                std::env::current_dir()
                    .ok()
                    .map(|d| d.to_string_lossy().into_owned()),
            ),
        ),
        (
            "hostname",
            Json::opt_str(read_trimmed("/proc/sys/kernel/hostname")),
        ),
        ("pid", Json::UInt(std::process::id().into())),
        (
            "stdin_eof",
            sys::stdin_at_eof().map_or(Json::Null, Json::Bool),
        ),
        ("cgroup", cgroup.values),
        ("cgroup_paths", cgroup.paths),
        ("proc_self_cgroup", Json::strs(cgroup.self_lines)),
        ("mounts", mounts()),
        ("dev", Json::strs(dir_names("/dev"))),
        (
            "capabilities",
            Json::obj(
                ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]
                    .into_iter()
                    .map(|k| (k, Json::opt_str(status.get(k).cloned()))),
            ),
        ),
        (
            "no_new_privs",
            status
                .get("NoNewPrivs")
                .map_or(Json::Null, |v| Json::Bool(v != "0")),
        ),
        (
            "seccomp",
            status
                .get("Seccomp")
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(Json::Null, Json::UInt),
        ),
        (
            "files",
            Json::obj(
                FILES
                    .iter()
                    .map(|f| (*f, Json::Bool(Path::new(f).exists()))),
            ),
        ),
        ("writable", writable(&cgroup.first_file)),
        (
            "network_interfaces",
            Json::strs(dir_names("/sys/class/net")),
        ),
        ("rlimits", rlimits()),
    ])
}

/// A file's contents without surrounding whitespace, or `None` when it cannot be read.
fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// The sorted names in a directory (empty when it cannot be read).
fn dir_names(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `/proc/self/status` as key → value.
fn proc_status() -> BTreeMap<String, String> {
    read_trimmed("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// What [`cgroup_report`] found.
struct CgroupReport {
    /// Key → value (string) or null.
    values: Json,
    /// Key → the file that was read, or null.
    paths: Json,
    /// The lines of `/proc/self/cgroup`.
    self_lines: Vec<String>,
    /// The first limit file found, for the read-only check.
    first_file: Option<String>,
}

/// Reads the v1 and v2 limits listed in [`CGROUP_V1`] and [`CGROUP_V2`].
fn cgroup_report() -> CgroupReport {
    let self_cgroup = read_trimmed("/proc/self/cgroup").unwrap_or_default();
    // controller (or "" for the v2 hierarchy) → (directory name, path of our cgroup)
    let mut own: BTreeMap<String, (String, String)> = BTreeMap::new();
    for line in self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        for controller in controllers.split(',') {
            own.insert(
                controller.to_owned(),
                (controllers.to_owned(), path.to_owned()),
            );
        }
    }
    let mut values = Vec::new();
    let mut paths = Vec::new();
    let mut first_file = None;
    let mut record = |key: &str, candidates: Vec<String>| {
        let found = candidates
            .into_iter()
            .find_map(|p| read_trimmed(&p).map(|v| (p, v)));
        match found {
            Some((path, value)) => {
                first_file.get_or_insert_with(|| path.clone());
                values.push((key.to_owned(), Json::Str(value)));
                paths.push((key.to_owned(), Json::Str(path)));
            }
            None => {
                values.push((key.to_owned(), Json::Null));
                paths.push((key.to_owned(), Json::Null));
            }
        }
    };
    for (key, controller, file) in CGROUP_V1 {
        let mut candidates = Vec::new();
        if let Some((dir, path)) = own.get(*controller) {
            candidates.push(join(&[CGROUP_ROOT, controller, path, file]));
            candidates.push(join(&[CGROUP_ROOT, dir, path, file]));
            candidates.push(join(&[CGROUP_ROOT, dir, file]));
        }
        candidates.push(join(&[CGROUP_ROOT, controller, file]));
        record(key, candidates);
    }
    for file in CGROUP_V2 {
        let mut candidates = Vec::new();
        if let Some((_, path)) = own.get("") {
            candidates.push(join(&[CGROUP_ROOT, path, file]));
            candidates.push(join(&[CGROUP_ROOT, "unified", path, file]));
        }
        candidates.push(join(&[CGROUP_ROOT, file]));
        candidates.push(join(&[CGROUP_ROOT, "unified", file]));
        record(file, candidates);
    }
    CgroupReport {
        values: Json::Obj(values),
        paths: Json::Obj(paths),
        self_lines: self_cgroup.lines().map(str::to_owned).collect(),
        first_file,
    }
}

/// Joins path pieces with single slashes (pieces may start or end with `/`).
fn join(pieces: &[&str]) -> String {
    let mut out = String::new();
    for piece in pieces {
        let piece = piece.trim_matches('/');
        if !piece.is_empty() {
            out.push('/');
            out.push_str(piece);
        }
    }
    out
}

/// The mount table from `/proc/self/mountinfo`.
fn mounts() -> Json {
    let text = read_trimmed("/proc/self/mountinfo").unwrap_or_default();
    Json::Arr(
        text.lines()
            .filter_map(|line| {
                // id parent major:minor root mount-point options [optional...] - fstype source super
                let fields: Vec<&str> = line.split(' ').collect();
                let sep = fields.iter().position(|f| *f == "-")?;
                Some(Json::obj([
                    ("mount_point", Json::Str(unescape_octal(fields.get(4)?))),
                    ("fs_type", Json::str(*fields.get(sep + 1)?)),
                    ("options", Json::str(*fields.get(5)?)),
                    ("source", Json::Str(unescape_octal(fields.get(sep + 2)?))),
                    ("super_options", Json::str(*fields.get(sep + 3)?)),
                ]))
            })
            .collect(),
    )
}

/// Undoes the kernel's `\ooo` escapes of spaces, tabs, newlines and backslashes.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether each place can be written: a file is created and deleted in `/tmp`, `/dev/shm`
/// and `/`; `/proc/sys/kernel/hostname` and a cgroup limit file are only opened for writing
/// (nothing is written).
fn writable(cgroup_file: &Option<String>) -> Json {
    let create_delete = |dir: &str| {
        let n = PROBE.fetch_add(1, Ordering::Relaxed);
        let path = join(&[
            dir,
            &format!(".skiff-test-server-probe-{}-{n}", std::process::id()),
        ]);
        let created = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .is_ok();
        if created {
            let _ = fs::remove_file(&path);
        }
        created
    };
    let open_for_write = |path: &str| fs::OpenOptions::new().write(true).open(path).is_ok();
    Json::obj([
        ("/tmp", Json::Bool(create_delete("/tmp"))),
        ("/dev/shm", Json::Bool(create_delete("/dev/shm"))),
        ("/", Json::Bool(create_delete("/"))),
        (
            "/proc/sys/kernel/hostname",
            Json::Bool(open_for_write("/proc/sys/kernel/hostname")),
        ),
        (
            "/sys/fs/cgroup",
            cgroup_file
                .as_deref()
                .map_or(Json::Null, |f| Json::Bool(open_for_write(f))),
        ),
    ])
}

/// `/proc/self/limits` as `max_open_files` → `{soft, hard}` (strings, `unlimited` kept).
fn rlimits() -> Json {
    let text = read_trimmed("/proc/self/limits").unwrap_or_default();
    // The kernel prints "%-25s %-20s %-20s %-10s": columns are fixed, names contain spaces.
    Json::Obj(
        text.lines()
            .skip(1)
            .filter_map(|line| {
                let name = line
                    .get(..25)?
                    .trim()
                    .to_ascii_lowercase()
                    .replace(' ', "_");
                let soft = line.get(26..46)?.trim();
                let hard = line.get(47..67.min(line.len()))?.trim();
                Some((
                    name,
                    Json::obj([("soft", Json::str(soft)), ("hard", Json::str(hard))]),
                ))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Mount points with escaped spaces come back as the real names.
    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_octal(r"/mnt/a\040b\134c"), r"/mnt/a b\c");
        assert_eq!(unescape_octal(r"/trailing\04"), r"/trailing\04");
    }

    // Path pieces join with exactly one slash, whatever slashes they carry.
    #[test]
    fn paths_join_with_single_slashes() {
        assert_eq!(
            join(&["/sys/fs/cgroup", "memory", "/", "memory.max"]),
            "/sys/fs/cgroup/memory/memory.max"
        );
        assert_eq!(
            join(&["/sys/fs/cgroup", "/a/b/", "f"]),
            "/sys/fs/cgroup/a/b/f"
        );
    }

    // The host report has every cgroup key, file and rlimit, and this process's pid.
    #[test]
    fn report_has_every_key() {
        let text = report().to_string();
        for key in CGROUP_V1
            .iter()
            .map(|(k, _, _)| *k)
            .chain(CGROUP_V2.iter().copied())
            .chain(FILES.iter().copied())
        {
            assert!(
                text.contains(&format!("\"{key}\":")),
                "{key} missing: {text}"
            );
        }
        assert!(text.contains(&format!("\"pid\":{}", std::process::id())));
        assert!(text.contains("\"max_open_files\":{\"soft\":"), "{text}");
    }
}
