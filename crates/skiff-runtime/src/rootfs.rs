//! An instance container's root filesystem: an overlay of the image's shared, read-only
//! layers with the container's own upper directory; plus the files the runtime writes for it
//! (`/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`) and the user lookup in its
//! `/etc/passwd` and `/etc/group`.
//!
//! The overlay is mounted with the new mount API (`fsopen`/`fsconfig`/`fsmount`), adding one
//! `lowerdir+` per layer, so the number of layers is not limited by the one-page option
//! string of `mount(2)`.

use std::path::{Path, PathBuf};

use rustix::fs::CWD;
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags};

/// A root filesystem operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A system call failed.
    #[error("{what} `{}`", path.display())]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The image's user cannot be resolved.
    #[error("user `{user}`: {why}")]
    User {
        /// The user as the image or manifest names it.
        user: String,
        /// Why it cannot be used.
        why: String,
    },
}

fn sys(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + use<> {
    let path = path.to_path_buf();
    move |source| RootfsError::Sys { what, path, source }
}

/// Mounts an overlay at `target` over `lowers` (top layer first) with `upper`/`work`.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RootfsError> {
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| sys("opening overlayfs", target)(e.into()))?;
    for lower in lowers {
        rustix::mount::fsconfig_set_string(&fs, "lowerdir+", lower)
            .map_err(|e| sys("adding lower layer", lower)(e.into()))?;
    }
    rustix::mount::fsconfig_set_string(&fs, "upperdir", upper)
        .map_err(|e| sys("setting upper dir", upper)(e.into()))?;
    rustix::mount::fsconfig_set_string(&fs, "workdir", work)
        .map_err(|e| sys("setting work dir", work)(e.into()))?;
    rustix::mount::fsconfig_create(&fs)
        .map_err(|e| sys("creating the overlay", target)(e.into()))?;
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(|e| sys("mounting the overlay", target)(e.into()))?;
    rustix::mount::move_mount(
        &mnt,
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| sys("attaching the overlay", target)(e.into()))?;
    Ok(())
}

/// Mounts a tmpfs of at most `size` bytes at `target` (which must exist), its root directory
/// with `mode`. Its pages are charged to the memory cgroup of whoever writes them, so a
/// container that fills it meets its own memory limit, never the host's disk.
pub fn mount_tmpfs(target: &Path, size: u64, mode: u32) -> Result<(), RootfsError> {
    use rustix::mount::MountFlags;
    let data = std::ffi::CString::new(format!("size={size},mode={mode:o}"))
        .map_err(|e| sys("mounting a tmpfs on", target)(std::io::Error::other(e)))?;
    rustix::mount::mount(
        "tmpfs",
        target,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        data.as_c_str(),
    )
    .map_err(|e| sys("mounting a tmpfs on", target)(e.into()))
}

/// Unmounts `target` if it is mounted (detached, so a busy mount does not block).
pub fn unmount(target: &Path) -> Result<(), RootfsError> {
    match rustix::mount::unmount(target, UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(sys("unmounting", target)(e.into())),
    }
}

/// Every mount point at or below `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// A resolved user: uid, gid, supplementary groups, home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// The uid.
    pub uid: u32,
    /// The primary gid.
    pub gid: u32,
    /// Supplementary groups from /etc/group.
    pub groups: Vec<u32>,
    /// The home directory (for `HOME`).
    pub home: String,
}

fn read_db(rootfs: &Path, file: &str) -> String {
    // Read through the mounted rootfs; a symlinked /etc/passwd pointing outside the rootfs is
    // read as it resolves on the host, so only regular files are trusted.
    let p = rootfs.join(file.trim_start_matches('/'));
    match std::fs::symlink_metadata(&p) {
        Ok(m) if m.is_file() && m.len() < 4 << 20 => {
            std::fs::read_to_string(&p).unwrap_or_default()
        }
        _ => String::new(),
    }
}

/// Resolves `user` (`uid`, `uid:gid`, `name`, `name:group`, or empty for root) against the
/// rootfs's /etc/passwd and /etc/group, as Docker does.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<ResolvedUser, RootfsError> {
    let passwd = read_db(rootfs, "/etc/passwd");
    let group = read_db(rootfs, "/etc/group");
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && (f[0] == u || f[2] == u));
    let uid: u32 = match (u.parse::<u32>(), &entry) {
        (Ok(n), _) => n,
        (Err(_), Some(f)) => f[2].parse().map_err(|_| RootfsError::User {
            user: user.into(),
            why: "its uid in /etc/passwd is not a number".into(),
        })?,
        (Err(_), None) => {
            return Err(RootfsError::User {
                user: user.into(),
                why: "no such user in the image's /etc/passwd".into(),
            });
        }
    };
    let home = entry
        .as_ref()
        .map(|f| f[5].to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let gid: u32 = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| RootfsError::User {
                    user: user.into(),
                    why: format!("no group `{g}` in the image's /etc/group"),
                })?,
        },
        None => entry
            .as_ref()
            .and_then(|f| f[3].parse().ok())
            .unwrap_or(if uid == 0 { 0 } else { uid }),
    };
    let name = entry.as_ref().map(|f| f[0].to_owned());
    let groups = match name {
        Some(name) => group
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .filter(|f| f.len() >= 4 && f[3].split(',').any(|m| m == name))
            .filter_map(|f| f[2].parse().ok())
            .filter(|g| *g != gid)
            .collect(),
        None => Vec::new(),
    };
    Ok(ResolvedUser {
        uid,
        gid,
        groups,
        home,
    })
}

/// Writes `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` for an instance into `dir`
/// (they are bind-mounted into each container).
pub fn write_etc_files(dir: &Path, hostname: &str) -> Result<(), RootfsError> {
    write_etc_files_with(dir, hostname, None)
}

/// [`write_etc_files`], with `/etc/resolv.conf` naming `resolver` (the daemon's resolver
/// inside the instance) when there is one.
pub fn write_etc_files_with(
    dir: &Path,
    hostname: &str,
    resolver: Option<std::net::SocketAddrV4>,
) -> Result<(), RootfsError> {
    std::fs::create_dir_all(dir).map_err(sys("creating", dir))?;
    let hosts =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    std::fs::write(dir.join("hosts"), hosts).map_err(sys("writing hosts", dir))?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))
        .map_err(sys("writing hostname", dir))?;
    // The instance has loopback only: it resolves nothing but its own names. The host's
    // resolvers would be unreachable from it anyway.
    let resolv = match resolver {
        Some(addr) => format!(
            "# skiff: the daemon's resolver inside this instance (Services by name, outside names by policy)\nnameserver {}\noptions ndots:0\n",
            addr.ip()
        ),
        None => "# skiff: this instance has a loopback-only network; names resolve from /etc/hosts\noptions ndots:0\n".to_owned(),
    };
    std::fs::write(dir.join("resolv.conf"), resolv).map_err(sys("writing resolv.conf", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs(passwd: &str, group: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("etc")).expect("etc");
        std::fs::write(d.path().join("etc/passwd"), passwd).expect("passwd");
        std::fs::write(d.path().join("etc/group"), group).expect("group");
        d
    }

    /// Users resolve by name or number, with groups, as Docker resolves them.
    #[test]
    fn resolves_users() {
        let d = rootfs(
            "root:x:0:0:root:/root:/bin/sh\napp:x:2020:2021:app:/home/app:/bin/sh\n",
            "root:x:0:\napp:x:2021:\nextra:x:3000:app,other\n",
        );
        let r = |u: &str| resolve_user(d.path(), u);
        assert_eq!(
            r("").expect("root"),
            ResolvedUser {
                uid: 0,
                gid: 0,
                groups: vec![],
                home: "/root".into()
            }
        );
        assert_eq!(
            r("app").expect("app"),
            ResolvedUser {
                uid: 2020,
                gid: 2021,
                groups: vec![3000],
                home: "/home/app".into()
            }
        );
        assert_eq!(r("2020").expect("2020").gid, 2021);
        assert_eq!(
            r("4242").expect("numeric unknown"),
            ResolvedUser {
                uid: 4242,
                gid: 4242,
                groups: vec![],
                home: "/".into()
            }
        );
        assert_eq!(r("app:extra").expect("named group").gid, 3000);
        assert_eq!(r("1:2").expect("numbers").gid, 2);
        assert!(r("nobody").is_err());
        assert!(r("app:nogroup").is_err());
    }

    /// An overlay of two layers shows the top layer's files over the lower's, writes go to
    /// the upper dir, and it unmounts.
    #[test]
    fn overlay_mounts_and_unmounts() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let d = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| {
            let x = d.path().join(n);
            std::fs::create_dir_all(&x).expect("mkdir");
            x
        };
        let (l1, l2, upper, work, target) = (p("l1"), p("l2"), p("upper"), p("work"), p("merged"));
        std::fs::write(l1.join("a"), "lower").expect("write");
        std::fs::write(l1.join("b"), "lower").expect("write");
        std::fs::write(l2.join("a"), "upper-layer").expect("write");
        mount_overlay(&[l2.clone(), l1.clone()], &upper, &work, &target).expect("mount");
        assert_eq!(
            std::fs::read_to_string(target.join("a")).expect("a"),
            "upper-layer"
        );
        assert_eq!(
            std::fs::read_to_string(target.join("b")).expect("b"),
            "lower"
        );
        std::fs::write(target.join("c"), "new").expect("write");
        assert!(upper.join("c").exists());
        assert!(!l1.join("c").exists());
        assert_eq!(mounts_under(d.path()), vec![target.clone()]);
        unmount(&target).expect("unmount");
        assert!(mounts_under(d.path()).is_empty());
    }
}
