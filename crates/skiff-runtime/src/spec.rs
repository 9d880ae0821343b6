//! The OCI runtime spec (`config.json`) of one container, generated with `oci-spec`'s typed
//! builders from a [`ContainerConfig`]: isolation by default, limits from the manifest.
//!
//! # Design
//! Defaults follow Docker's and Kubernetes' (see `ARCHITECTURE.md`): new pid, mount, ipc and
//! uts namespaces and the instance's own network namespace (joined by path, so a revision's
//! containers share it like a pod); no new privileges; Docker's default capability set
//! without `NET_RAW`; a seccomp profile that refuses the syscalls Docker's default profile
//! refuses to unprivileged containers; the usual masked and read-only `/proc` and `/sys`
//! paths; a pids limit; a `tmpfs` on `/tmp` and `/dev/shm`; `/etc/hosts`, `/etc/hostname`
//! and `/etc/resolv.conf` from the instance.

use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Arch, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, LinuxSeccompAction, LinuxSeccompBuilder,
    LinuxSyscallBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder, get_default_mounts,
};

/// Docker's default capabilities, without `NET_RAW` (Kubernetes' restricted baseline).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// Syscalls refused with EPERM: those Docker's default seccomp profile refuses to a container
/// without extra capabilities (kernel modules, reboot, clock and keyring changes, mounts and
/// namespaces, tracing other processes' memory, BPF, io_uring, …).
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// A bind or tmpfs mount for a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeMount {
    /// A host directory bind-mounted in.
    Bind {
        /// The directory on the host.
        source: PathBuf,
        /// Where it appears.
        destination: String,
        /// Read-only.
        read_only: bool,
    },
    /// A tmpfs.
    Tmpfs {
        /// Where it appears.
        destination: String,
        /// Its size in bytes.
        size: u64,
        /// Read-only.
        read_only: bool,
    },
}

/// Everything that decides one container's spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    /// The container's hostname (the instance id).
    pub hostname: String,
    /// The mounted root filesystem.
    pub rootfs: PathBuf,
    /// Mount the root filesystem read-only.
    pub read_only_rootfs: bool,
    /// argv.
    pub args: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// The working directory.
    pub cwd: String,
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Capabilities in the bounding set (and effective/permitted for root).
    pub capabilities: Vec<String>,
    /// Apply the default seccomp profile.
    pub seccomp: bool,
    /// The instance's network namespace.
    pub netns: PathBuf,
    /// The cgroup path (absolute: created at the root of each hierarchy).
    pub cgroups_path: String,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// CFS quota in microseconds per 100 ms period.
    pub cpu_quota: Option<i64>,
    /// CPU shares.
    pub cpu_shares: Option<u64>,
    /// Most processes/threads.
    pub pids_limit: i64,
    /// The directory holding `hosts`, `hostname` and `resolv.conf`.
    pub etc_dir: PathBuf,
    /// Size of the `/tmp` tmpfs.
    pub tmp_size: u64,
    /// Volumes.
    pub volumes: Vec<VolumeMount>,
}

/// Open files allowed to a container: 65536, or the daemon's own hard limit when lower (a
/// container cannot be given more than its creator has).
fn nofile() -> u64 {
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX);
    hard.min(65536)
}

/// The CFS period skiff uses (100 ms, the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Capabilities after adding and dropping: `ALL` in `drop` empties the default set.
pub fn capabilities(add: &[String], drop: &[String]) -> Vec<String> {
    let norm = |c: &str| {
        let c = c.to_ascii_uppercase();
        if c.starts_with("CAP_") {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    let mut set: Vec<String> = if drop.iter().any(|d| d.eq_ignore_ascii_case("ALL")) {
        Vec::new()
    } else {
        let dropped: HashSet<String> = drop.iter().map(|d| norm(d)).collect();
        DEFAULT_CAPABILITIES
            .iter()
            .map(|c| (*c).to_owned())
            .filter(|c| !dropped.contains(c))
            .collect()
    };
    for a in add {
        let a = norm(a);
        if !set.contains(&a) {
            set.push(a);
        }
    }
    set
}

fn mount(
    destination: &str,
    typ: &str,
    source: &str,
    options: &[&str],
) -> Result<Mount, OciSpecError> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
        .build()
}

/// Builds the spec.
pub fn build(c: &ContainerConfig) -> Result<Spec, OciSpecError> {
    let caps: HashSet<Capability> = c
        .capabilities
        .iter()
        .filter_map(|s| Capability::from_str(s.strip_prefix("CAP_").unwrap_or(s)).ok())
        .collect();
    let root_caps = if c.uid == 0 {
        caps.clone()
    } else {
        HashSet::new()
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps)
        .effective(root_caps.clone())
        .permitted(root_caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(c.uid)
                .gid(c.gid)
                .additional_gids(c.additional_gids.clone())
                .build()?,
        )
        .args(c.args.clone())
        .env(c.env.clone())
        .cwd(c.cwd.clone())
        .capabilities(capabilities)
        .no_new_privileges(true)
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(nofile())
                .soft(nofile())
                .build()?,
        ])
        .build()?;

    let mut mounts: Vec<Mount> = get_default_mounts()
        .into_iter()
        .map(|m| {
            if m.destination() == &PathBuf::from("/dev/shm") {
                mount(
                    "/dev/shm",
                    "tmpfs",
                    "shm",
                    &["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"],
                )
            } else {
                Ok(m)
            }
        })
        .collect::<Result<_, _>>()?;
    // A volume mounted at /tmp replaces the runtime's own.
    let tmp_volume = c.volumes.iter().any(|v| {
        let (VolumeMount::Bind { destination, .. } | VolumeMount::Tmpfs { destination, .. }) = v;
        destination.trim_end_matches('/') == "/tmp"
    });
    if !tmp_volume {
        let tmp_size = format!("size={}", c.tmp_size);
        mounts.push(mount(
            "/tmp",
            "tmpfs",
            "tmpfs",
            &["nosuid", "nodev", "mode=1777", &tmp_size],
        )?);
    }
    for f in ["hosts", "hostname", "resolv.conf"] {
        let src = c.etc_dir.join(f);
        mounts.push(mount(
            &format!("/etc/{f}"),
            "bind",
            &src.display().to_string(),
            &["rbind", "ro", "nosuid", "nodev"],
        )?);
    }
    for v in &c.volumes {
        mounts.push(match v {
            VolumeMount::Bind {
                source,
                destination,
                read_only,
            } => {
                let mut o = vec!["rbind", "nosuid", "nodev"];
                o.push(if *read_only { "ro" } else { "rw" });
                mount(destination, "bind", &source.display().to_string(), &o)?
            }
            VolumeMount::Tmpfs {
                destination,
                size,
                read_only,
            } => {
                let size = format!("size={size}");
                let mut o = vec!["nosuid", "nodev", "mode=1777", size.as_str()];
                if *read_only {
                    o.push("ro");
                }
                mount(destination, "tmpfs", "tmpfs", &o)?
            }
        });
    }

    let namespaces = vec![
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Pid)
            .build()?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Ipc)
            .build()?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Uts)
            .build()?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Mount)
            .build()?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path(c.netns.clone())
            .build()?,
    ];
    let mut resources = LinuxResourcesBuilder::default()
        .devices(vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()?,
        ])
        .pids(LinuxPidsBuilder::default().limit(c.pids_limit).build()?);
    if let Some(limit) = c.memory_limit {
        resources = resources.memory(LinuxMemoryBuilder::default().limit(limit).build()?);
    }
    if c.cpu_quota.is_some() || c.cpu_shares.is_some() {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(q) = c.cpu_quota {
            cpu = cpu.quota(q).period(CPU_PERIOD_US);
        }
        if let Some(s) = c.cpu_shares {
            cpu = cpu.shares(s);
        }
        resources = resources.cpu(cpu.build()?);
    }
    let mut seccomp = None;
    if c.seccomp {
        seccomp = Some(
            LinuxSeccompBuilder::default()
                .default_action(LinuxSeccompAction::ScmpActAllow)
                .architectures(vec![
                    Arch::ScmpArchX86_64,
                    Arch::ScmpArchX86,
                    Arch::ScmpArchX32,
                    Arch::ScmpArchAarch64,
                    Arch::ScmpArchArm,
                ])
                .syscalls(vec![
                    LinuxSyscallBuilder::default()
                        .names(
                            DENIED_SYSCALLS
                                .iter()
                                .map(|s| (*s).to_owned())
                                .collect::<Vec<_>>(),
                        )
                        .action(LinuxSeccompAction::ScmpActErrno)
                        .errno_ret(libc::EPERM as u32)
                        .build()?,
                ])
                .build()?,
        );
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&c.cgroups_path))
        .resources(resources.build()?)
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths());
    if let Some(s) = seccomp {
        linux = linux.seccomp(s);
    }
    SpecBuilder::default()
        .version("1.0.2")
        .hostname(c.hostname.clone())
        .root(
            RootBuilder::default()
                .path(c.rootfs.clone())
                .readonly(c.read_only_rootfs)
                .build()?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux.build()?)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ContainerConfig {
        ContainerConfig {
            hostname: "hello-00001-abcde".into(),
            rootfs: "/run/x/rootfs".into(),
            read_only_rootfs: false,
            args: vec!["/bin/app".into(), "--flag".into()],
            env: vec!["PORT=8080".into()],
            cwd: "/".into(),
            uid: 2020,
            gid: 2020,
            additional_gids: vec![],
            capabilities: capabilities(&[], &[]),
            seccomp: true,
            netns: "/run/x/netns".into(),
            cgroups_path: "/skiff/hello-00001-abcde".into(),
            memory_limit: Some(350 << 20),
            cpu_quota: Some(50_000),
            cpu_shares: Some(256),
            pids_limit: 1024,
            etc_dir: "/run/x/etc".into(),
            tmp_size: 64 << 20,
            volumes: vec![VolumeMount::Tmpfs {
                destination: "/cache".into(),
                size: 1 << 20,
                read_only: false,
            }],
        }
    }

    /// The generated config.json carries every isolation default and limit.
    #[test]
    fn spec_has_isolation_and_limits() {
        let spec = build(&config()).expect("spec");
        let json = serde_json::to_value(&spec).expect("json");
        let process = &json["process"];
        assert_eq!(process["noNewPrivileges"], true);
        assert_eq!(process["user"]["uid"], 2020);
        let bounding: Vec<&str> = process["capabilities"]["bounding"]
            .as_array()
            .expect("caps")
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        assert!(
            bounding.contains(&"CAP_CHOWN")
                && !bounding.contains(&"CAP_NET_RAW")
                && !bounding.contains(&"CAP_SYS_ADMIN")
        );
        assert!(
            process["capabilities"]["effective"]
                .as_array()
                .is_none_or(|a| a.is_empty()),
            "non-root gets no effective caps"
        );
        let ns: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .expect("ns")
            .iter()
            .filter_map(|n| n["type"].as_str())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
        assert_eq!(json["linux"]["namespaces"][4]["path"], "/run/x/netns");
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 350 << 20);
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(json["linux"]["resources"]["cpu"]["period"], 100_000);
        assert_eq!(json["linux"]["resources"]["cpu"]["shares"], 256);
        assert_eq!(json["linux"]["resources"]["pids"]["limit"], 1024);
        assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert!(
            json["linux"]["maskedPaths"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p == "/proc/kcore"))
        );
        assert!(
            json["linux"]["readonlyPaths"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p == "/proc/sys"))
        );
        let dests: Vec<&str> = json["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .filter_map(|m| m["destination"].as_str())
            .collect();
        for d in [
            "/proc",
            "/dev",
            "/dev/shm",
            "/tmp",
            "/etc/hosts",
            "/etc/hostname",
            "/etc/resolv.conf",
            "/cache",
        ] {
            assert!(dests.contains(&d), "{d} in {dests:?}");
        }
    }

    /// Capability add/drop follow Kubernetes: `ALL` drops everything, adds come after.
    #[test]
    fn capability_math() {
        assert_eq!(
            capabilities(&["NET_BIND_SERVICE".into()], &["ALL".into()]),
            vec!["CAP_NET_BIND_SERVICE".to_owned()]
        );
        let c = capabilities(&[], &["CHOWN".into(), "CAP_KILL".into()]);
        assert!(
            !c.contains(&"CAP_CHOWN".to_owned())
                && !c.contains(&"CAP_KILL".to_owned())
                && c.contains(&"CAP_SETUID".to_owned())
        );
    }

    /// Root keeps its capabilities effective.
    #[test]
    fn root_has_effective_caps() {
        let mut c = config();
        c.uid = 0;
        let json = serde_json::to_value(build(&c).expect("spec")).expect("json");
        assert!(
            json["process"]["capabilities"]["effective"]
                .as_array()
                .is_some_and(|a| a.len() == DEFAULT_CAPABILITIES.len())
        );
    }
}
