//! Unpacking a layer into a directory that overlayfs can use as a lower layer.
//!
//! # Design
//! Entries are applied one by one with our own loop over `tar`'s entry reader, because an
//! image layer is not an ordinary archive:
//! - Whiteouts become overlayfs whiteouts: `.wh.NAME` is a 0/0 character device at `NAME`, and
//!   `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory. The image's own view
//!   (what is deleted) is thus exactly what overlayfs shows when layers are stacked.
//! - Nothing may land outside the layer directory: absolute paths and `..` refuse the layer,
//!   and so does any entry whose parent is a symlink (the classic `a -> /etc`, then `a/passwd`
//!   trick). Real layers never need either, since they are made by walking a filesystem.
//! - Owners, modes (setuid included), mtimes and the safe xattrs (`user.*`,
//!   `security.capability`) are kept; `trusted.*` and other xattrs from an image are dropped
//!   so an image cannot forge overlayfs metadata. Device nodes are skipped with a log line.
//! - The uncompressed stream is hashed while it is read, and must match the layer's
//!   `diff_id` from the image config.
//!
//! Compression is detected from the bytes (gzip, zstd, or none), not from the media type,
//! because `docker save` archives and some registries label layers loosely.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info};

/// What unpacking found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries applied.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Device nodes skipped.
    pub skipped_devices: u64,
    /// `sha256:` of the uncompressed layer.
    pub diff_id: String,
}

/// A layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// Reading or decompressing the layer failed.
    #[error("reading the layer")]
    Read(#[source] io::Error),
    /// An entry would land outside the layer directory.
    #[error("the layer is refused: entry `{path}` {why}")]
    Unsafe {
        /// The entry's path as written in the layer.
        path: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// A hard link points at nothing the layer contains.
    #[error(
        "the layer is refused: hard link `{path}` points at `{target}`, which the layer does not contain"
    )]
    DanglingHardlink {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// Writing the tree failed.
    #[error("writing `{path}`")]
    Write {
        /// The path inside the layer.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The uncompressed content does not match the image config.
    #[error("the layer's content hashes to {actual}, but the image config says {expected}")]
    DiffIdMismatch {
        /// The diff_id from the config.
        expected: String,
        /// What the content hashes to.
        actual: String,
    },
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Opens `blob`, detecting gzip, zstd or plain tar from its first bytes.
pub fn decompressed(blob: &Path) -> io::Result<Box<dyn Read + Send>> {
    let mut reader = BufReader::with_capacity(256 * 1024, fs::File::open(blob)?);
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader)?)
    } else {
        Box::new(reader)
    })
}

/// The safe relative path of an entry, or why it is refused.
fn safe_relative(raw: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    Ok(out)
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

fn allowed_xattr(name: &str) -> bool {
    name.starts_with("user.") || name == "security.capability"
}

/// Owner and time of an entry.
struct Meta {
    uid: u32,
    gid: u32,
    mtime: u64,
}

struct Unpacker<'a> {
    root: &'a Path,
    stats: UnpackStats,
    dir_times: Vec<(PathBuf, u64)>,
}

impl Unpacker<'_> {
    fn err(rel: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
        move |source| UnpackError::Write {
            path: rel.display().to_string(),
            source,
        }
    }

    /// Creates the parents of `rel` as directories, refusing to pass through a symlink.
    fn ensure_parents(&self, rel: &Path, shown: &str) -> Result<(), UnpackError> {
        let mut cur = self.root.to_path_buf();
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        for c in parent.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(UnpackError::Unsafe {
                        path: shown.to_owned(),
                        why: "lies beneath a symlink (it could be written outside the layer)",
                    });
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    fs::remove_file(&cur).map_err(Self::err(rel))?;
                    fs::create_dir(&cur).map_err(Self::err(rel))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&cur).map_err(Self::err(rel))?;
                    fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                        .map_err(Self::err(rel))?;
                }
                Err(e) => return Err(Self::err(rel)(e)),
            }
        }
        Ok(())
    }

    /// Removes whatever is at `full` unless it is a directory and `keep_dir`.
    fn clear(full: &Path, keep_dir: bool, rel: &Path) -> Result<(), UnpackError> {
        match fs::symlink_metadata(full) {
            Ok(m) if m.is_dir() && keep_dir => Ok(()),
            Ok(m) if m.is_dir() => fs::remove_dir_all(full).map_err(Self::err(rel)),
            Ok(_) => fs::remove_file(full).map_err(Self::err(rel)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::err(rel)(e)),
        }
    }

    fn owner_mode_times(
        &mut self,
        full: &Path,
        rel: &Path,
        m: &Meta,
        mode: Option<u32>,
        is_dir: bool,
    ) -> Result<(), UnpackError> {
        let (uid, gid, mtime) = (m.uid, m.gid, m.mtime);
        rustix::fs::chownat(
            CWD,
            full,
            Some(rustix::process::Uid::from_raw(uid)),
            Some(rustix::process::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Self::err(rel)(e.into()))?;
        if let Some(mode) = mode {
            fs::set_permissions(full, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(Self::err(rel))?;
        }
        if is_dir {
            self.dir_times.push((full.to_path_buf(), mtime));
        } else {
            set_mtime(full, mtime).map_err(|e| Self::err(rel)(e.into()))?;
        }
        Ok(())
    }
}

fn set_mtime(full: &Path, mtime: u64) -> rustix::io::Result<()> {
    let t = Timespec {
        tv_sec: mtime as i64,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        CWD,
        full,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
}

/// Unpacks the layer at `blob` into `dest` (which must not exist yet). When `diff_id` is
/// given, the uncompressed content must hash to it.
pub fn unpack_layer(
    blob: &Path,
    dest: &Path,
    diff_id: Option<&str>,
) -> Result<UnpackStats, UnpackError> {
    fs::create_dir(dest).map_err(|source| UnpackError::Write {
        path: dest.display().to_string(),
        source,
    })?;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o755)).map_err(|source| {
        UnpackError::Write {
            path: dest.display().to_string(),
            source,
        }
    })?;
    let reader = HashingReader {
        inner: decompressed(blob).map_err(UnpackError::Read)?,
        hasher: Sha256::new(),
    };
    let mut archive = tar::Archive::new(reader);
    let mut u = Unpacker {
        root: dest,
        stats: UnpackStats::default(),
        dir_times: Vec::new(),
    };
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        let raw = entry.path().map_err(UnpackError::Read)?.into_owned();
        let shown = raw.display().to_string();
        let rel = safe_relative(&raw).map_err(|why| UnpackError::Unsafe {
            path: shown.clone(),
            why,
        })?;
        if rel.as_os_str().is_empty() {
            continue; // the layer's root ("./")
        }
        let header = entry.header().clone();
        let mut pax: HashMap<String, Vec<u8>> = HashMap::new();
        if let Some(exts) = entry.pax_extensions().map_err(UnpackError::Read)? {
            for ext in exts {
                let ext = ext.map_err(UnpackError::Read)?;
                if let Ok(k) = ext.key() {
                    pax.insert(k.to_owned(), ext.value_bytes().to_vec());
                }
            }
        }
        let pax_num = |k: &str| {
            pax.get(k)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|s| s.parse::<u64>().ok())
        };
        let uid = pax_num("uid").or_else(|| header.uid().ok()).unwrap_or(0) as u32;
        let gid = pax_num("gid").or_else(|| header.gid().ok()).unwrap_or(0) as u32;
        let mtime = pax
            .get("mtime")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.split('.').next()?.parse().ok())
            .or_else(|| header.mtime().ok())
            .unwrap_or(0);
        let mode = header.mode().unwrap_or(0o644);
        let meta = Meta { uid, gid, mtime };
        let name = rel.file_name().map(OsStr::as_bytes).unwrap_or_default();
        let full = dest.join(&rel);
        u.stats.entries += 1;

        // Whiteouts.
        if name == OPAQUE.as_bytes() {
            let dir_rel = rel.parent().map(Path::to_path_buf).unwrap_or_default();
            u.ensure_parents(&rel, &shown)?;
            let dir = dest.join(&dir_rel);
            rustix::fs::lsetxattr(
                &dir,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| Unpacker::err(&rel)(e.into()))?;
            u.stats.whiteouts += 1;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let target_rel = rel.with_file_name(OsStr::from_bytes(hidden));
            u.ensure_parents(&target_rel, &shown)?;
            let target = dest.join(&target_rel);
            Unpacker::clear(&target, false, &target_rel)?;
            rustix::fs::mknodat(
                CWD,
                &target,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| Unpacker::err(&target_rel)(e.into()))?;
            u.stats.whiteouts += 1;
            continue;
        }

        u.ensure_parents(&rel, &shown)?;
        let kind = header.entry_type();
        match kind {
            tar::EntryType::Directory => {
                Unpacker::clear(&full, true, &rel)?;
                if !full.is_dir() {
                    fs::create_dir(&full).map_err(Unpacker::err(&rel))?;
                }
                u.owner_mode_times(&full, &rel, &meta, Some(mode), true)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                Unpacker::clear(&full, false, &rel)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&full)
                    .map_err(Unpacker::err(&rel))?;
                let n = io::copy(&mut entry, &mut f).map_err(UnpackError::Read)?;
                u.stats.bytes += n;
                drop(f);
                u.owner_mode_times(&full, &rel, &meta, Some(mode), false)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .ok_or_else(|| UnpackError::Unsafe {
                        path: shown.clone(),
                        why: "is a symlink without a target",
                    })?
                    .into_owned();
                Unpacker::clear(&full, false, &rel)?;
                std::os::unix::fs::symlink(&target, &full).map_err(Unpacker::err(&rel))?;
                u.owner_mode_times(&full, &rel, &meta, None, false)?;
            }
            tar::EntryType::Link => {
                let target_raw = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .ok_or_else(|| UnpackError::Unsafe {
                        path: shown.clone(),
                        why: "is a hard link without a target",
                    })?
                    .into_owned();
                let target_rel = safe_relative(&target_raw).map_err(|why| UnpackError::Unsafe {
                    path: shown.clone(),
                    why,
                })?;
                u.ensure_parents(&target_rel, &shown)?;
                let target = dest.join(&target_rel);
                match fs::symlink_metadata(&target) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        return Err(UnpackError::DanglingHardlink {
                            path: shown,
                            target: target_raw.display().to_string(),
                        });
                    }
                }
                Unpacker::clear(&full, false, &rel)?;
                fs::hard_link(&target, &full).map_err(Unpacker::err(&rel))?;
            }
            tar::EntryType::Fifo => {
                Unpacker::clear(&full, false, &rel)?;
                rustix::fs::mknodat(
                    CWD,
                    &full,
                    FileType::Fifo,
                    Mode::from_raw_mode(mode & 0o777),
                    0,
                )
                .map_err(|e| Unpacker::err(&rel)(e.into()))?;
                u.owner_mode_times(&full, &rel, &meta, Some(mode), false)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                info!(path = %shown, "skipping a device node in an image layer; the runtime provides /dev");
                u.stats.skipped_devices += 1;
                continue;
            }
            other => {
                debug!(path = %shown, kind = ?other, "skipping a tar entry of an unsupported kind");
                continue;
            }
        }
        for (k, v) in &pax {
            if let Some(xattr) = k.strip_prefix("SCHILY.xattr.") {
                if allowed_xattr(xattr) {
                    rustix::fs::lsetxattr(&full, xattr, v, rustix::fs::XattrFlags::empty())
                        .map_err(|e| Unpacker::err(&rel)(e.into()))?;
                } else {
                    debug!(path = %shown, xattr, "dropping an xattr an image may not set");
                }
            }
        }
    }
    // Directory mtimes last: writing into a directory changes its mtime.
    for (dir, mtime) in u.dir_times.iter().rev() {
        let _ = set_mtime(dir, *mtime);
    }
    // Hash the rest of the stream (tar's end-of-archive padding) for the diff_id.
    let mut reader = archive.into_inner();
    io::copy(&mut reader, &mut io::sink()).map_err(UnpackError::Read)?;
    u.stats.diff_id = format!("sha256:{}", hex::encode(reader.hasher.finalize()));
    if let Some(expected) = diff_id
        && expected != u.stats.diff_id
    {
        return Err(UnpackError::DiffIdMismatch {
            expected: expected.to_owned(),
            actual: u.stats.diff_id,
        });
    }
    Ok(u.stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths with `..` or a root are refused; `./` prefixes are dropped.
    #[test]
    fn relative_paths() {
        assert_eq!(
            safe_relative(Path::new("./etc/passwd")),
            Ok(PathBuf::from("etc/passwd"))
        );
        assert!(safe_relative(Path::new("../x")).is_err());
        assert!(safe_relative(Path::new("a/../../x")).is_err());
        assert!(safe_relative(Path::new("/etc/passwd")).is_err());
    }

    /// Only harmless xattrs pass.
    #[test]
    fn xattr_filter() {
        assert!(allowed_xattr("user.mime"));
        assert!(allowed_xattr("security.capability"));
        assert!(!allowed_xattr("trusted.overlay.opaque"));
        assert!(!allowed_xattr("security.selinux"));
    }
}
