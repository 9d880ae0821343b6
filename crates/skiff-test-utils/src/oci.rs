//! Builds OCI images from scratch, in Rust, with exactly the contents a test asks for.
//!
//! A layer is a list of [`Entry`] values written by [`layer`] (or [`LayerBuilder`]) into a
//! deterministic tar (fixed mtime, uid/gid and modes as given, no user or group names) and
//! compressed with [`Compression`]. [`ImageBuilder`] puts layers and an image config together
//! and writes them out as an [OCI image layout] (one platform, or an image index with one
//! manifest per platform through [`write_oci_index_layout`]) or as a `docker save` archive.
//! [`busybox_layer`] gives a runnable userland from the host's static busybox, and
//! [`big_layer`] streams a large incompressible layer to a temporary file.
//!
//! # Design
//!
//! - Every header is written by this module rather than through `tar::Builder::append_data`,
//!   which refuses `..` and absolute names: [`Entry::Raw`] must be able to write exactly the
//!   malicious names an unpacker has to reject. Names that do not fit the 100-byte ustar field
//!   go in a PAX `path` record (as Go's `archive/tar`, and so Docker, writes them) or, when
//!   asked with [`LongNames::Gnu`], in a GNU `././@LongLink` record.
//! - Extended attributes are PAX `SCHILY.xattr.<name>` records, the form the [OCI layer spec]
//!   and Docker use.
//! - Digests are stable: the same entries and compression give the same blob bytes, so a test
//!   may compare digests across runs.
//!
//! # Limitations
//!
//! - Writing is blocking file I/O; call it before starting async work, or from
//!   `spawn_blocking` when the layers are large.
//! - Whiteouts and opaque markers are written as plain empty files, the way the OCI spec
//!   describes them; nothing checks that a whiteout hides something from a lower layer.
//!
//! [OCI image layout]: https://github.com/opencontainers/image-spec/blob/main/image-layout.md
//! [OCI layer spec]: https://github.com/opencontainers/image-spec/blob/main/layer.md

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub use tar::EntryType;

/// Media type of an uncompressed OCI layer.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media type of a gzip-compressed OCI layer.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of a zstd-compressed OCI layer.
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Media type of an OCI image config.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an OCI image manifest.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of a Docker schema 2 manifest (what `skopeo --format v2s2` pushes).
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Media type of a Docker manifest list.
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// The annotation that names a manifest in an OCI layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// The mtime of every tar entry (2023-11-14T22:13:20Z), so that digests are stable.
pub const FIXED_MTIME: u64 = 1_700_000_000;
/// The `created` time written into image configs; the same instant as [`FIXED_MTIME`].
pub const FIXED_CREATED: &str = "2023-11-14T22:13:20Z";
/// A conventional `PATH` for [`ImageConfig::env`]; images built here have no `Env` unless a
/// test sets one.
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The busybox applets [`busybox_layer`] links under `/bin`.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "httpd", "nc", "sleep", "cat", "echo", "ls", "env", "id", "true", "false", "wget",
    "mkdir", "printf", "head", "dd",
];

/// Where [`busybox_layer`] reads the static busybox binary from (Debian's `busybox-static`).
pub const HOST_BUSYBOX: &str = "/usr/bin/busybox";

/// The largest name that fits the ustar `name` and `linkname` fields with a terminating NUL;
/// longer ones go in an extension record, as GNU tar does.
const NAME_FIELD: usize = 100;

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain tar (`application/vnd.oci.image.layer.v1.tar`).
    None,
    /// gzip (`+gzip`).
    Gzip,
    /// zstd (`+zstd`).
    Zstd,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => MEDIA_TYPE_LAYER_TAR,
            Compression::Gzip => MEDIA_TYPE_LAYER_GZIP,
            Compression::Zstd => MEDIA_TYPE_LAYER_ZSTD,
        }
    }
}

/// How names longer than the 100-byte ustar field are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LongNames {
    /// A PAX `path` / `linkpath` record before the entry (what Go and Docker write).
    #[default]
    Pax,
    /// A GNU `././@LongLink` entry of type `L` / `K` (what GNU tar and the `tar` crate write).
    Gnu,
}

/// One tar entry of a layer.
///
/// Paths are relative to the layer root; a leading `/` is stripped, and `..` components are
/// refused (use [`Entry::Raw`] to write such names on purpose). Directory names get the
/// trailing `/` that `docker save` and GNU tar give them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir {
        /// Path in the image, e.g. `etc`.
        path: String,
        /// Permission bits, including setuid/setgid/sticky (e.g. `0o1777`).
        mode: u32,
        /// Owner.
        uid: u64,
        /// Group.
        gid: u64,
        /// Extended attributes, written as PAX `SCHILY.xattr.<name>` records.
        xattrs: Vec<(String, Vec<u8>)>,
    },
    /// A regular file.
    File {
        /// Path in the image, e.g. `etc/hello`.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u64,
        /// Group.
        gid: u64,
        /// The file's contents.
        contents: Vec<u8>,
        /// Extended attributes, written as PAX `SCHILY.xattr.<name>` records.
        xattrs: Vec<(String, Vec<u8>)>,
    },
    /// A symbolic link (mode 0777, as Linux reports symlinks).
    Symlink {
        /// Path of the link.
        path: String,
        /// What it points to, written verbatim (relative or absolute, `..` allowed).
        target: String,
    },
    /// A hard link to an entry earlier in the same layer (or a lower layer).
    Hardlink {
        /// Path of the new name.
        path: String,
        /// Path of the existing file, relative to the layer root (a leading `/` is stripped).
        target: String,
    },
    /// A whiteout: written as the empty file `.wh.<name>` in `path`'s parent directory, which
    /// deletes `path` from the layers below.
    Whiteout {
        /// The path being deleted, e.g. `etc/motd` (written as `etc/.wh.motd`).
        path: String,
    },
    /// An opaque directory marker: the empty file `<path>/.wh..wh..opq`, which hides every
    /// lower-layer child of `path`. Only the marker is written; add an [`Entry::Dir`] for the
    /// directory itself if the test wants one.
    OpaqueDir {
        /// The directory made opaque.
        path: String,
    },
    /// A character device (mode 0666, owned by root), e.g. `dev/null` is 1, 3.
    CharDevice {
        /// Path of the device node.
        path: String,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// An entry written exactly as given, with no normalisation or validation: the escape
    /// hatch for malicious names such as `../escape` or `/abs/path`.
    Raw {
        /// The name bytes, written verbatim into the header (or a long-name record).
        header_path_bytes: Vec<u8>,
        /// The entry type (`Regular`, `Directory`, `Symlink`, `Link`, ...).
        kind: EntryType,
        /// Permission bits.
        mode: u32,
        /// The link name bytes for `Symlink` and `Link` entries, written verbatim.
        link_bytes: Option<Vec<u8>>,
        /// Data written after the header (its length becomes the header's size).
        contents: Vec<u8>,
    },
}

impl Entry {
    /// A directory with mode 0755 owned by root.
    pub fn dir(path: &str) -> Entry {
        Entry::Dir {
            path: path.to_owned(),
            mode: 0o755,
            uid: 0,
            gid: 0,
            xattrs: Vec::new(),
        }
    }

    /// A regular file with mode 0644 owned by root.
    pub fn file(path: &str, contents: impl AsRef<[u8]>) -> Entry {
        Entry::File {
            path: path.to_owned(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            contents: contents.as_ref().to_vec(),
            xattrs: Vec::new(),
        }
    }

    /// An executable regular file (mode 0755) owned by root.
    pub fn executable(path: &str, contents: impl AsRef<[u8]>) -> Entry {
        Entry::file(path, contents).with_mode(0o755)
    }

    /// A symlink at `path` pointing to `target`.
    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::Symlink {
            path: path.to_owned(),
            target: target.to_owned(),
        }
    }

    /// A hard link at `path` to the existing `target`.
    pub fn hardlink(path: &str, target: &str) -> Entry {
        Entry::Hardlink {
            path: path.to_owned(),
            target: target.to_owned(),
        }
    }

    /// A whiteout deleting `path` from lower layers.
    pub fn whiteout(path: &str) -> Entry {
        Entry::Whiteout {
            path: path.to_owned(),
        }
    }

    /// An opaque marker for the directory `path`.
    pub fn opaque_dir(path: &str) -> Entry {
        Entry::OpaqueDir {
            path: path.to_owned(),
        }
    }

    /// A character device node.
    pub fn char_device(path: &str, major: u32, minor: u32) -> Entry {
        Entry::CharDevice {
            path: path.to_owned(),
            major,
            minor,
        }
    }

    /// A regular file (mode 0644) whose name is written verbatim, e.g. `b"../escape"`.
    pub fn raw_file(header_path_bytes: impl AsRef<[u8]>, contents: impl AsRef<[u8]>) -> Entry {
        Entry::Raw {
            header_path_bytes: header_path_bytes.as_ref().to_vec(),
            kind: EntryType::Regular,
            mode: 0o644,
            link_bytes: None,
            contents: contents.as_ref().to_vec(),
        }
    }

    /// A symlink whose name and target are written verbatim.
    pub fn raw_symlink(header_path_bytes: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
        Entry::Raw {
            header_path_bytes: header_path_bytes.as_ref().to_vec(),
            kind: EntryType::Symlink,
            mode: 0o777,
            link_bytes: Some(target.as_ref().to_vec()),
            contents: Vec::new(),
        }
    }

    /// A hard link whose name and target are written verbatim, e.g. a link to `/etc/shadow`.
    pub fn raw_hardlink(header_path_bytes: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
        Entry::Raw {
            header_path_bytes: header_path_bytes.as_ref().to_vec(),
            kind: EntryType::Link,
            mode: 0o644,
            link_bytes: Some(target.as_ref().to_vec()),
            contents: Vec::new(),
        }
    }

    /// Sets the permission bits of a `Dir`, `File` or `Raw` entry.
    ///
    /// # Panics
    ///
    /// On other entries, whose mode is fixed by what they are: a silent no-op would hide a
    /// mistake in the test.
    pub fn with_mode(mut self, new_mode: u32) -> Entry {
        match &mut self {
            Entry::Dir { mode, .. } | Entry::File { mode, .. } | Entry::Raw { mode, .. } => {
                *mode = new_mode;
            }
            other => panic!("with_mode: {other:?} has no settable mode"),
        }
        self
    }

    /// Sets the owner of a `Dir` or `File` entry.
    ///
    /// # Panics
    ///
    /// On other entries, which are always owned by root.
    pub fn with_owner(mut self, new_uid: u64, new_gid: u64) -> Entry {
        match &mut self {
            Entry::Dir { uid, gid, .. } | Entry::File { uid, gid, .. } => {
                *uid = new_uid;
                *gid = new_gid;
            }
            other => panic!("with_owner: {other:?} has no settable owner"),
        }
        self
    }

    /// Adds an extended attribute (e.g. `user.skiff` or `security.capability`) to a `Dir` or
    /// `File` entry.
    ///
    /// # Panics
    ///
    /// On other entries.
    pub fn with_xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Entry {
        match &mut self {
            Entry::Dir { xattrs, .. } | Entry::File { xattrs, .. } => {
                xattrs.push((name.to_owned(), value.as_ref().to_vec()));
            }
            other => panic!("with_xattr: {other:?} cannot carry xattrs"),
        }
        self
    }
}

/// Size, digests and media type of a layer blob: what a manifest and a config say about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// The OCI media type (see [`Compression::media_type`]).
    pub media_type: String,
    /// `sha256:<hex>` of the blob as stored (compressed).
    pub digest: String,
    /// Size of the blob as stored, in bytes.
    pub size: u64,
    /// `sha256:<hex>` of the uncompressed tar: the config's `rootfs.diff_ids` entry.
    pub diff_id: String,
}

/// Where a layer's blob bytes live.
#[derive(Clone, Debug)]
enum BlobData {
    /// Small layers stay in memory.
    Memory(Arc<[u8]>),
    /// Big layers are streamed to a temporary file, removed when the last clone is dropped.
    File(Arc<tempfile::TempPath>),
}

/// A built layer: its blob and what describes it.
///
/// The public fields may be changed to make a lying manifest (a wrong digest or size); the
/// blob itself stays as built.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Media type, digests and size.
    pub info: LayerInfo,
    /// How the blob is compressed.
    pub compression: Compression,
    /// Size of the uncompressed tar, in bytes.
    pub tar_size: u64,
    /// The blob.
    data: BlobData,
}

impl Layer {
    /// `sha256:<hex>` of the blob.
    pub fn digest(&self) -> &str {
        &self.info.digest
    }

    /// `sha256:<hex>` of the uncompressed tar.
    pub fn diff_id(&self) -> &str {
        &self.info.diff_id
    }

    /// Size of the blob in bytes.
    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// The OCI media type.
    pub fn media_type(&self) -> &str {
        &self.info.media_type
    }

    /// Opens the blob as stored (compressed).
    pub fn open_blob(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        Ok(match &self.data {
            BlobData::Memory(bytes) => Box::new(&bytes[..]),
            BlobData::File(path) => Box::new(BufReader::new(fs::File::open(&***path)?)),
        })
    }

    /// The blob as stored (compressed), read into memory.
    pub fn blob_bytes(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_blob()?.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Opens the uncompressed tar stream.
    pub fn open_tar(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        let blob = self.open_blob()?;
        Ok(match self.compression {
            Compression::None => blob,
            Compression::Gzip => Box::new(flate2::read::GzDecoder::new(blob)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(blob)?),
        })
    }

    /// The uncompressed tar, read into memory.
    pub fn tar_bytes(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_tar()?.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Lists the tar's entries as a reader sees them (long names and PAX records resolved).
    pub fn list(&self) -> anyhow::Result<Vec<ListedEntry>> {
        list_tar(self.open_tar().context("opening the layer tar")?)
    }

    /// Copies the blob to `dest` (a hard link when the blob is a file on the same filesystem).
    fn write_blob_to(&self, dest: &Path) -> anyhow::Result<()> {
        if dest.exists() {
            return Ok(());
        }
        match &self.data {
            BlobData::Memory(bytes) => {
                fs::write(dest, bytes).with_context(|| format!("writing {}", dest.display()))
            }
            BlobData::File(path) => {
                if fs::hard_link(&***path, dest).is_err() {
                    fs::copy(&***path, dest).with_context(|| {
                        format!("copying {} to {}", path.display(), dest.display())
                    })?;
                }
                Ok(())
            }
        }
    }
}

/// One entry of a tar as read back by the `tar` crate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedEntry {
    /// The name bytes, after long-name and PAX `path` records are applied.
    pub path: Vec<u8>,
    /// The entry type.
    pub kind: EntryType,
    /// The link name bytes of symlinks and hard links.
    pub link: Option<Vec<u8>>,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Size of the entry's data.
    pub size: u64,
    /// `(major, minor)` of device nodes.
    pub device: Option<(u32, u32)>,
    /// Extended attributes from `SCHILY.xattr.*` PAX records.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl ListedEntry {
    /// The path as (lossy) UTF-8, for assertions.
    pub fn path_str(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    /// The link name as (lossy) UTF-8.
    pub fn link_str(&self) -> Option<String> {
        self.link
            .as_ref()
            .map(|l| String::from_utf8_lossy(l).into_owned())
    }
}

/// Lists the entries of an uncompressed tar stream.
pub fn list_tar(reader: impl Read) -> anyhow::Result<Vec<ListedEntry>> {
    let mut archive = tar::Archive::new(reader);
    let mut out = Vec::new();
    for entry in archive.entries().context("reading tar entries")? {
        let mut entry = entry.context("reading a tar entry")?;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().context("reading PAX records")? {
            for ext in pax {
                let ext = ext.context("reading a PAX record")?;
                if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((
                        String::from_utf8_lossy(name).into_owned(),
                        ext.value_bytes().to_vec(),
                    ));
                }
            }
        }
        let header = entry.header();
        let kind = header.entry_type();
        let device = match kind {
            EntryType::Char | EntryType::Block => Some((
                header.device_major().ok().flatten().unwrap_or_default(),
                header.device_minor().ok().flatten().unwrap_or_default(),
            )),
            _ => None,
        };
        out.push(ListedEntry {
            path: entry.path_bytes().into_owned(),
            kind,
            link: entry.link_name_bytes().map(|l| l.into_owned()),
            mode: header.mode().context("mode")?,
            uid: header.uid().context("uid")?,
            gid: header.gid().context("gid")?,
            size: header.size().context("size")?,
            device,
            xattrs,
        });
    }
    Ok(out)
}

/// Builds one layer from entries.
#[derive(Clone, Debug)]
pub struct LayerBuilder {
    /// The entries, in tar order.
    entries: Vec<Entry>,
    /// Blob compression.
    compression: Compression,
    /// How names over 100 bytes are written.
    long_names: LongNames,
}

impl LayerBuilder {
    /// An empty layer with the given compression.
    pub fn new(compression: Compression) -> LayerBuilder {
        LayerBuilder {
            entries: Vec::new(),
            compression,
            long_names: LongNames::default(),
        }
    }

    /// Appends one entry.
    pub fn entry(mut self, entry: Entry) -> LayerBuilder {
        self.entries.push(entry);
        self
    }

    /// Appends entries.
    pub fn entries(mut self, entries: impl IntoIterator<Item = Entry>) -> LayerBuilder {
        self.entries.extend(entries);
        self
    }

    /// Chooses how names over 100 bytes are written (PAX by default).
    pub fn long_names(mut self, long_names: LongNames) -> LayerBuilder {
        self.long_names = long_names;
        self
    }

    /// Writes the tar, compresses it and computes its digests, all in memory.
    pub fn build(&self) -> anyhow::Result<Layer> {
        let (blob, sums) = write_layer(Vec::new(), self.compression, |tar| {
            for entry in &self.entries {
                append_entry(tar, entry, self.long_names)?;
            }
            Ok(())
        })?;
        Ok(Layer {
            info: sums.info(self.compression),
            compression: self.compression,
            tar_size: sums.tar_size,
            data: BlobData::Memory(blob.into()),
        })
    }
}

/// Builds a layer from `entries`.
///
/// # Panics
///
/// When an entry is invalid (a `..` component outside [`Entry::Raw`]); use
/// [`LayerBuilder::build`] to get the error instead.
pub fn layer(entries: &[Entry], compression: Compression) -> Layer {
    LayerBuilder::new(compression)
        .entries(entries.iter().cloned())
        .build()
        .expect("layer entries are valid (use Entry::Raw for malicious names)")
}

/// Builds a layer holding one file of `size_bytes` pseudo-random (incompressible) bytes at
/// `path_in_image`, with its parent directories, streamed to a temporary file.
///
/// The bytes come from ChaCha8 seeded with `size_bytes`, so the same call gives the same
/// digests. Only a few small buffers are held in memory, whatever the size.
pub fn big_layer(
    path_in_image: &str,
    size_bytes: u64,
    compression: Compression,
) -> anyhow::Result<Layer> {
    let path = clean_path(path_in_image)?;
    let file = tempfile::Builder::new()
        .prefix("skiff-big-layer-")
        .tempfile()
        .context("creating a temporary file for a big layer")?;
    let (file, temp_path) = file.into_parts();
    let writer = io::BufWriter::with_capacity(1 << 20, file);
    let (writer, sums) = write_layer(writer, compression, |tar| {
        let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for depth in 1..components.len() {
            let parent = components[..depth].join("/");
            append_entry(tar, &Entry::dir(&parent), LongNames::Pax)?;
        }
        let mut header = base_header(EntryType::Regular, 0o644, 0, 0);
        header.set_size(size_bytes);
        append_named(
            tar,
            header,
            path.as_bytes(),
            None,
            &[],
            LongNames::Pax,
            PrngReader::new(size_bytes),
        )
    })?;
    writer
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .context("flushing a big layer")?;
    Ok(Layer {
        info: sums.info(compression),
        compression,
        tar_size: sums.tar_size,
        data: BlobData::File(Arc::new(temp_path)),
    })
}

/// A layer with `/bin/busybox` (copied from the host's static [`HOST_BUSYBOX`]) and a
/// symlink to it for each of [`BUSYBOX_APPLETS`], `/tmp` (mode 1777), `/etc/passwd` with
/// `root`, `app` (uid 2020) and `nobody` (uid 65534), and `/etc/group`, so that a container can
/// run `httpd -f -p 8080`.
pub fn busybox_layer(compression: Compression) -> anyhow::Result<Layer> {
    let busybox = fs::read(HOST_BUSYBOX).with_context(|| {
        format!("reading {HOST_BUSYBOX} (install Debian's busybox-static package)")
    })?;
    let mut entries = vec![Entry::dir("bin"), Entry::executable("bin/busybox", busybox)];
    entries.extend(
        BUSYBOX_APPLETS
            .iter()
            .map(|applet| Entry::symlink(&format!("bin/{applet}"), "busybox")),
    );
    entries.extend([
        Entry::dir("etc"),
        Entry::file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\n\
             app:x:2020:2020:app:/tmp:/bin/sh\n\
             nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        Entry::file("etc/group", "root:x:0:\napp:x:2020:\nnogroup:x:65534:\n"),
        Entry::dir("root").with_mode(0o700),
        Entry::dir("tmp").with_mode(0o1777),
    ]);
    LayerBuilder::new(compression).entries(entries).build()
}

/// The runtime defaults of an image: the `config` object of the OCI image config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`; omitted when `None`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`; omitted when `None`.
    pub cmd: Option<Vec<String>>,
    /// `Env` as `KEY=value` strings; omitted when empty.
    pub env: Vec<String>,
    /// `WorkingDir`; omitted when `None`.
    pub working_dir: Option<String>,
    /// `User` (`name`, `uid`, or `uid:gid`); omitted when `None`.
    pub user: Option<String>,
    /// `ExposedPorts` keys such as `8080/tcp`; omitted when empty.
    pub exposed_ports: Vec<String>,
    /// `Labels`; omitted when empty.
    pub labels: BTreeMap<String, String>,
}

/// The platform an image is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `os`, e.g. `linux`.
    pub os: String,
    /// `architecture` in Go's spelling, e.g. `amd64` or `arm64`.
    pub architecture: String,
    /// `variant`, e.g. `v8` for arm64; omitted when `None`.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform as the OCI JSON object used in configs and index entries.
    fn to_json(&self) -> Value {
        let mut p = json!({ "architecture": self.architecture, "os": self.os });
        if let Some(variant) = &self.variant {
            p["variant"] = json!(variant);
        }
        p
    }
}

impl Default for Platform {
    /// `linux/amd64`.
    fn default() -> Platform {
        Platform {
            os: "linux".to_owned(),
            architecture: "amd64".to_owned(),
            variant: None,
        }
    }
}

/// What was written for one image: enough for a test to compare against what a registry or
/// a client reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// `sha256:<hex>` of the manifest bytes.
    pub manifest_digest: String,
    /// The manifest bytes exactly as written.
    pub manifest: Vec<u8>,
    /// `sha256:<hex>` of the config bytes.
    pub config_digest: String,
    /// The config bytes exactly as written.
    pub config: Vec<u8>,
    /// The layers, bottom first.
    pub layers: Vec<LayerInfo>,
    /// The platform in the config.
    pub platform: Platform,
}

/// What was written for a multi-platform image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexInfo {
    /// `sha256:<hex>` of the image index bytes.
    pub index_digest: String,
    /// The image index bytes exactly as written.
    pub index: Vec<u8>,
    /// One entry per platform, in index order.
    pub images: Vec<ImageInfo>,
}

/// Assembles layers and a config into an image and writes it out.
#[derive(Clone, Debug, Default)]
pub struct ImageBuilder {
    /// Layers, bottom first.
    layers: Vec<Layer>,
    /// Runtime defaults.
    config: ImageConfig,
    /// The config's platform.
    platform: Platform,
}

impl ImageBuilder {
    /// An empty `linux/amd64` image with no runtime defaults.
    pub fn new() -> ImageBuilder {
        ImageBuilder::default()
    }

    /// Adds a layer on top of the previous ones.
    pub fn layer(mut self, layer: Layer) -> ImageBuilder {
        self.layers.push(layer);
        self
    }

    /// Replaces the runtime defaults.
    pub fn config(mut self, config: ImageConfig) -> ImageBuilder {
        self.config = config;
        self
    }

    /// Sets `Entrypoint`.
    pub fn entrypoint(mut self, entrypoint: &[&str]) -> ImageBuilder {
        self.config.entrypoint = Some(strings(entrypoint));
        self
    }

    /// Sets `Cmd`.
    pub fn cmd(mut self, cmd: &[&str]) -> ImageBuilder {
        self.config.cmd = Some(strings(cmd));
        self
    }

    /// Adds `KEY=value` to `Env`.
    pub fn env(mut self, key: &str, value: &str) -> ImageBuilder {
        self.config.env.push(format!("{key}={value}"));
        self
    }

    /// Sets `WorkingDir`.
    pub fn working_dir(mut self, dir: &str) -> ImageBuilder {
        self.config.working_dir = Some(dir.to_owned());
        self
    }

    /// Sets `User`.
    pub fn user(mut self, user: &str) -> ImageBuilder {
        self.config.user = Some(user.to_owned());
        self
    }

    /// Adds an `ExposedPorts` key such as `8080/tcp`.
    pub fn expose(mut self, port: &str) -> ImageBuilder {
        self.config.exposed_ports.push(port.to_owned());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> ImageBuilder {
        self.config.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets the platform (`linux`, `arm64`, `Some("v8")`).
    pub fn platform(mut self, os: &str, architecture: &str, variant: Option<&str>) -> ImageBuilder {
        self.platform = Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        };
        self
    }

    /// The layers added so far.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The OCI image config JSON, exactly as it will be written.
    pub fn config_json(&self) -> Vec<u8> {
        let c = &self.config;
        let mut runtime = serde_json::Map::new();
        if let Some(entrypoint) = &c.entrypoint {
            runtime.insert("Entrypoint".into(), json!(entrypoint));
        }
        if let Some(cmd) = &c.cmd {
            runtime.insert("Cmd".into(), json!(cmd));
        }
        if !c.env.is_empty() {
            runtime.insert("Env".into(), json!(c.env));
        }
        if let Some(dir) = &c.working_dir {
            runtime.insert("WorkingDir".into(), json!(dir));
        }
        if let Some(user) = &c.user {
            runtime.insert("User".into(), json!(user));
        }
        if !c.exposed_ports.is_empty() {
            let ports: serde_json::Map<String, Value> = c
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            runtime.insert("ExposedPorts".into(), Value::Object(ports));
        }
        if !c.labels.is_empty() {
            runtime.insert("Labels".into(), json!(c.labels));
        }
        let mut config = self.platform.to_json();
        config["created"] = json!(FIXED_CREATED);
        config["config"] = Value::Object(runtime);
        config["rootfs"] = json!({
            "type": "layers",
            "diff_ids": self.layers.iter().map(|l| l.info.diff_id.as_str()).collect::<Vec<_>>(),
        });
        config["history"] = Value::Array(
            (0..self.layers.len())
                .map(|i| {
                    json!({
                        "created": FIXED_CREATED,
                        "created_by": format!("skiff-test-utils layer {i}"),
                    })
                })
                .collect(),
        );
        serde_json::to_vec(&config).expect("a JSON value always serializes")
    }

    /// The OCI image manifest JSON for `config` (the bytes of [`Self::config_json`]).
    fn manifest_json(&self, config: &[u8]) -> Vec<u8> {
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": {
                "mediaType": MEDIA_TYPE_CONFIG,
                "digest": sha256_digest(config),
                "size": config.len(),
            },
            "layers": self.layers.iter().map(|l| json!({
                "mediaType": l.info.media_type,
                "digest": l.info.digest,
                "size": l.info.size,
            })).collect::<Vec<_>>(),
        });
        serde_json::to_vec(&manifest).expect("a JSON value always serializes")
    }

    /// Writes the layers, config and manifest into `dir`'s blobs (creating the layout when
    /// needed) without touching `index.json`.
    fn write_blobs(&self, dir: &Path) -> anyhow::Result<ImageInfo> {
        let blobs = init_layout(dir)?;
        for layer in &self.layers {
            layer.write_blob_to(&blobs.join(hex_of(&layer.info.digest)))?;
        }
        let config = self.config_json();
        let manifest = self.manifest_json(&config);
        let config_digest = write_json_blob(&blobs, &config)?;
        let manifest_digest = write_json_blob(&blobs, &manifest)?;
        Ok(ImageInfo {
            manifest_digest,
            manifest,
            config_digest,
            config,
            layers: self.layers.iter().map(|l| l.info.clone()).collect(),
            platform: self.platform.clone(),
        })
    }

    /// Writes an [OCI image layout] into `dir` with this image tagged `tag` (the
    /// `org.opencontainers.image.ref.name` annotation), as `skopeo copy oci:DIR:TAG` reads it.
    ///
    /// An existing layout in `dir` is kept, so several tags can share one layout; an entry
    /// with the same tag is replaced.
    ///
    /// [OCI image layout]: https://github.com/opencontainers/image-spec/blob/main/image-layout.md
    pub fn write_oci_layout(&self, dir: &Path, tag: &str) -> anyhow::Result<ImageInfo> {
        let info = self.write_blobs(dir)?;
        let descriptor = json!({
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": info.manifest_digest,
            "size": info.manifest.len(),
            "platform": info.platform.to_json(),
            "annotations": { REF_NAME_ANNOTATION: tag },
        });
        add_to_index_json(dir, tag, descriptor)?;
        Ok(info)
    }

    /// Writes a `docker save` archive at `path` tagged `repo_tag` (e.g.
    /// `skiff-test/hello:latest`), as `docker load` and `skopeo copy docker-archive:PATH`
    /// read it: `manifest.json`, `repositories`, the config as `<hex>.json` and each layer
    /// uncompressed as `<diff_id hex>/layer.tar`.
    ///
    /// Returns the image ID, which for Docker is the config digest.
    pub fn write_docker_archive(&self, path: &Path, repo_tag: &str) -> anyhow::Result<String> {
        let config = self.config_json();
        let config_digest = sha256_digest(&config);
        let config_name = format!("{}.json", hex_of(&config_digest));
        let layer_names: Vec<String> = self
            .layers
            .iter()
            .map(|l| format!("{}/layer.tar", hex_of(&l.info.diff_id)))
            .collect();
        let manifest = json!([{
            "Config": config_name,
            "RepoTags": [repo_tag],
            "Layers": layer_names,
        }]);
        let (repo, tag) = split_repo_tag(repo_tag);
        let top = self
            .layers
            .last()
            .map(|l| hex_of(&l.info.diff_id))
            .unwrap_or_default();
        let repositories = json!({ repo: { tag: top } });

        let file =
            fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut tar = tar::Builder::new(io::BufWriter::new(file));
        let mut written = std::collections::HashSet::new();
        for (layer, name) in self.layers.iter().zip(&layer_names) {
            if !written.insert(name.clone()) {
                // The same layer twice: docker save stores it once.
                continue;
            }
            let dir = hex_of(&layer.info.diff_id);
            append_named(
                &mut tar,
                base_header(EntryType::Directory, 0o755, 0, 0),
                format!("{dir}/").as_bytes(),
                None,
                &[],
                LongNames::Pax,
                io::empty(),
            )?;
            let mut header = base_header(EntryType::Regular, 0o644, 0, 0);
            header.set_size(layer.tar_size);
            let reader = layer
                .open_tar()
                .with_context(|| format!("opening layer {}", layer.info.digest))?;
            append_named(
                &mut tar,
                header,
                name.as_bytes(),
                None,
                &[],
                LongNames::Pax,
                reader,
            )?;
        }
        for (name, bytes) in [
            (config_name.as_str(), config),
            (
                "manifest.json",
                serde_json::to_vec(&manifest).expect("a JSON value always serializes"),
            ),
            (
                "repositories",
                serde_json::to_vec(&repositories).expect("a JSON value always serializes"),
            ),
        ] {
            let mut header = base_header(EntryType::Regular, 0o644, 0, 0);
            header.set_size(bytes.len() as u64);
            append_named(
                &mut tar,
                header,
                name.as_bytes(),
                None,
                &[],
                LongNames::Pax,
                &bytes[..],
            )?;
        }
        tar.into_inner()
            .context("finishing the docker archive")?
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .context("flushing the docker archive")?;
        Ok(config_digest)
    }
}

/// Writes a multi-platform image into the OCI layout `dir`: every image's blobs and manifest,
/// an image index (`application/vnd.oci.image.index.v1+json`) listing each manifest with its
/// platform, and an `index.json` entry tagging that index `tag`, so that
/// `skopeo copy --all oci:DIR:TAG docker://...` pushes every platform.
pub fn write_oci_index_layout(
    dir: &Path,
    tag: &str,
    images: &[ImageBuilder],
) -> anyhow::Result<IndexInfo> {
    ensure!(
        !images.is_empty(),
        "an image index needs at least one image"
    );
    let mut infos = Vec::new();
    for image in images {
        infos.push(image.write_blobs(dir)?);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": infos.iter().map(|i| json!({
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": i.manifest_digest,
            "size": i.manifest.len(),
            "platform": i.platform.to_json(),
        })).collect::<Vec<_>>(),
    });
    let index = serde_json::to_vec(&index).expect("a JSON value always serializes");
    let index_digest = write_json_blob(&dir.join("blobs/sha256"), &index)?;
    add_to_index_json(
        dir,
        tag,
        json!({
            "mediaType": MEDIA_TYPE_INDEX,
            "digest": index_digest,
            "size": index.len(),
            "annotations": { REF_NAME_ANNOTATION: tag },
        }),
    )?;
    Ok(IndexInfo {
        index_digest,
        index,
        images: infos,
    })
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `sha256:<hex>` and length of everything `reader` yields, read in chunks (for big blobs).
pub fn sha256_reader(mut reader: impl Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), total))
}

/// The hex part of a `sha256:<hex>` digest (the input unchanged when it has no algorithm).
pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Splits `repo:tag` (`registry:5000/repo` keeps its port), defaulting the tag to `latest`.
fn split_repo_tag(repo_tag: &str) -> (&str, &str) {
    match repo_tag.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (repo_tag, "latest"),
    }
}

/// Creates `oci-layout` and `blobs/sha256` in `dir` when missing; returns the blobs dir.
fn init_layout(dir: &Path) -> anyhow::Result<PathBuf> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let marker = dir.join("oci-layout");
    if !marker.exists() {
        fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .with_context(|| format!("writing {}", marker.display()))?;
    }
    Ok(blobs)
}

/// Writes `bytes` as a blob named by its digest; returns the digest.
fn write_json_blob(blobs: &Path, bytes: &[u8]) -> anyhow::Result<String> {
    let digest = sha256_digest(bytes);
    let path = blobs.join(hex_of(&digest));
    fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(digest)
}

/// Adds `descriptor` to the layout's `index.json`, replacing any entry tagged `tag`.
fn add_to_index_json(dir: &Path, tag: &str, descriptor: Value) -> anyhow::Result<()> {
    let path = dir.join("index.json");
    let mut index = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes)
            .with_context(|| format!("parsing {}", path.display()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": [],
        }),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let Some(manifests) = index["manifests"].as_array_mut() else {
        bail!("{} has no manifests array", path.display());
    };
    manifests.retain(|m| m["annotations"][REF_NAME_ANNOTATION].as_str() != Some(tag));
    manifests.push(descriptor);
    let bytes = serde_json::to_vec(&index).expect("a JSON value always serializes");
    fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Hashes and counts what goes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> HashingWriter<W> {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A compressing writer of any [`Compression`].
enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    fn new(inner: W, compression: Compression) -> io::Result<Encoder<W>> {
        Ok(match compression {
            Compression::None => Encoder::None(inner),
            // Level 1 for both: test layers are mostly incompressible or tiny, and a debug
            // build should not spend seconds compressing 50 MB of noise.
            Compression::Gzip => Encoder::Gzip(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .write(inner, flate2::Compression::fast()),
            ),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(inner, 1)?),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

/// The digests and sizes gathered while writing a layer.
struct LayerSums {
    digest: String,
    size: u64,
    diff_id: String,
    tar_size: u64,
}

impl LayerSums {
    fn info(&self, compression: Compression) -> LayerInfo {
        LayerInfo {
            media_type: compression.media_type().to_owned(),
            digest: self.digest.clone(),
            size: self.size,
            diff_id: self.diff_id.clone(),
        }
    }
}

type LayerTar<W> = tar::Builder<HashingWriter<Encoder<HashingWriter<W>>>>;

/// Runs `fill` on a tar builder whose output is hashed (diff_id), compressed, hashed again
/// (digest) and written to `sink`.
fn write_layer<W: Write>(
    sink: W,
    compression: Compression,
    fill: impl FnOnce(&mut LayerTar<W>) -> anyhow::Result<()>,
) -> anyhow::Result<(W, LayerSums)> {
    let encoder =
        Encoder::new(HashingWriter::new(sink), compression).context("starting the compressor")?;
    let mut tar = tar::Builder::new(HashingWriter::new(encoder));
    fill(&mut tar)?;
    let (encoder, diff_id, tar_size) = tar.into_inner().context("finishing the tar")?.finish();
    let (sink, digest, size) = encoder
        .finish()
        .context("finishing the compressor")?
        .finish();
    Ok((
        sink,
        LayerSums {
            digest,
            size,
            diff_id,
            tar_size,
        },
    ))
}

/// A ustar header with the fixed mtime and empty user and group names.
fn base_header(kind: EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(uid);
    header.set_gid(gid);
    header.set_mtime(FIXED_MTIME);
    header.set_size(0);
    header
}

/// Strips a leading `/` and refuses `..` components and empty paths.
fn clean_path(path: &str) -> anyhow::Result<String> {
    let trimmed = path.trim_start_matches('/');
    ensure!(!trimmed.is_empty(), "empty path `{path}`");
    ensure!(
        !trimmed.split('/').any(|c| c == ".."),
        "path `{path}` has a `..` component: use Entry::Raw to write it on purpose"
    );
    Ok(trimmed.to_owned())
}

/// Puts `parent/` + `prefix` + the last component of `path`, e.g. `etc/.wh.motd`.
fn prefixed_last(path: &str, prefix: &str) -> anyhow::Result<String> {
    let clean = clean_path(path)?;
    let clean = clean.trim_end_matches('/');
    Ok(match clean.rsplit_once('/') {
        Some((parent, name)) => format!("{parent}/{prefix}{name}"),
        None => format!("{prefix}{clean}"),
    })
}

/// Appends one [`Entry`].
fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    entry: &Entry,
    long_names: LongNames,
) -> anyhow::Result<()> {
    match entry {
        Entry::Dir {
            path,
            mode,
            uid,
            gid,
            xattrs,
        } => {
            let name = format!("{}/", clean_path(path)?.trim_end_matches('/'));
            let header = base_header(EntryType::Directory, *mode, *uid, *gid);
            append_named(
                tar,
                header,
                name.as_bytes(),
                None,
                xattrs,
                long_names,
                io::empty(),
            )
        }
        Entry::File {
            path,
            mode,
            uid,
            gid,
            contents,
            xattrs,
        } => {
            let mut header = base_header(EntryType::Regular, *mode, *uid, *gid);
            header.set_size(contents.len() as u64);
            append_named(
                tar,
                header,
                clean_path(path)?.as_bytes(),
                None,
                xattrs,
                long_names,
                &contents[..],
            )
        }
        Entry::Symlink { path, target } => append_named(
            tar,
            base_header(EntryType::Symlink, 0o777, 0, 0),
            clean_path(path)?.as_bytes(),
            Some(target.as_bytes()),
            &[],
            long_names,
            io::empty(),
        ),
        Entry::Hardlink { path, target } => append_named(
            tar,
            base_header(EntryType::Link, 0o644, 0, 0),
            clean_path(path)?.as_bytes(),
            Some(clean_path(target)?.as_bytes()),
            &[],
            long_names,
            io::empty(),
        ),
        Entry::Whiteout { path } => append_named(
            tar,
            base_header(EntryType::Regular, 0o644, 0, 0),
            prefixed_last(path, ".wh.")?.as_bytes(),
            None,
            &[],
            long_names,
            io::empty(),
        ),
        Entry::OpaqueDir { path } => {
            let name = format!("{}/.wh..wh..opq", clean_path(path)?.trim_end_matches('/'));
            append_named(
                tar,
                base_header(EntryType::Regular, 0o644, 0, 0),
                name.as_bytes(),
                None,
                &[],
                long_names,
                io::empty(),
            )
        }
        Entry::CharDevice { path, major, minor } => {
            let mut header = base_header(EntryType::Char, 0o666, 0, 0);
            header
                .set_device_major(*major)
                .context("device major number")?;
            header
                .set_device_minor(*minor)
                .context("device minor number")?;
            append_named(
                tar,
                header,
                clean_path(path)?.as_bytes(),
                None,
                &[],
                long_names,
                io::empty(),
            )
        }
        Entry::Raw {
            header_path_bytes,
            kind,
            mode,
            link_bytes,
            contents,
        } => {
            let mut header = base_header(*kind, *mode, 0, 0);
            header.set_size(contents.len() as u64);
            append_named(
                tar,
                header,
                header_path_bytes,
                link_bytes.as_deref(),
                &[],
                long_names,
                &contents[..],
            )
        }
    }
}

/// Copies `bytes` into a fixed-size header field, NUL-padded and truncated to fit.
fn fill_field(field: &mut [u8], bytes: &[u8]) {
    field.fill(0);
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
}

/// One PAX record: `"<len> <key>=<value>\n"`, where `<len>` counts the whole record,
/// including its own digits.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Appends a metadata entry (PAX `x`, GNU `L`/`K`) carrying `data`.
fn append_meta<W: Write>(
    tar: &mut tar::Builder<W>,
    kind: EntryType,
    name: &[u8],
    data: &[u8],
) -> io::Result<()> {
    let mut header = base_header(kind, 0o644, 0, 0);
    if kind == EntryType::GNULongName || kind == EntryType::GNULongLink {
        // GNU tar's own spelling; its magic must be GNU's for readers that check.
        header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
    }
    fill_field(&mut header.as_old_mut().name, name);
    header.set_size(data.len() as u64);
    header.set_cksum();
    tar.append(&header, data)
}

/// Appends `header` named `name` (and linking to `link`) with `xattrs`, writing names that do
/// not fit their field as `long_names` says, followed by `data`.
fn append_named<W: Write>(
    tar: &mut tar::Builder<W>,
    mut header: tar::Header,
    name: &[u8],
    link: Option<&[u8]>,
    xattrs: &[(String, Vec<u8>)],
    long_names: LongNames,
    data: impl Read,
) -> anyhow::Result<()> {
    let name_too_long = name.len() >= NAME_FIELD;
    let link_too_long = link.is_some_and(|l| l.len() >= NAME_FIELD);
    let mut pax = Vec::new();
    for (key, value) in xattrs {
        pax_record(&mut pax, format!("SCHILY.xattr.{key}").as_bytes(), value);
    }
    match long_names {
        LongNames::Pax => {
            if name_too_long {
                pax_record(&mut pax, b"path", name);
            }
            if let Some(link) = link.filter(|_| link_too_long) {
                pax_record(&mut pax, b"linkpath", link);
            }
        }
        LongNames::Gnu => {
            let with_nul = |bytes: &[u8]| [bytes, b"\0"].concat();
            if name_too_long {
                append_meta(
                    tar,
                    EntryType::GNULongName,
                    b"././@LongLink",
                    &with_nul(name),
                )
                .context("writing a GNU long name")?;
            }
            if let Some(link) = link.filter(|_| link_too_long) {
                append_meta(
                    tar,
                    EntryType::GNULongLink,
                    b"././@LongLink",
                    &with_nul(link),
                )
                .context("writing a GNU long link name")?;
            }
        }
    }
    if !pax.is_empty() {
        // Go names these `PaxHeaders.0/<name>`; readers ignore the name.
        let base = name
            .rsplit(|b| *b == b'/')
            .find(|c| !c.is_empty())
            .unwrap_or(b"entry");
        let pax_name = [b"PaxHeaders.0/".as_slice(), base].concat();
        append_meta(tar, EntryType::XHeader, &pax_name, &pax).context("writing PAX records")?;
    }
    fill_field(&mut header.as_old_mut().name, name);
    if let Some(link) = link {
        fill_field(&mut header.as_old_mut().linkname, link);
    }
    header.set_cksum();
    tar.append(&header, data)
        .with_context(|| format!("writing tar entry `{}`", String::from_utf8_lossy(name)))
}

/// `remaining` bytes of ChaCha8 output: deterministic and incompressible.
struct PrngReader {
    rng: ChaCha8Rng,
    remaining: u64,
}

impl PrngReader {
    fn new(len: u64) -> PrngReader {
        PrngReader {
            rng: ChaCha8Rng::seed_from_u64(len),
            remaining: len,
        }
    }
}

impl Read for PrngReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        self.rng.fill_bytes(&mut buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(list: &'a [ListedEntry], path: &str) -> &'a ListedEntry {
        list.iter()
            .find(|e| e.path_str() == path)
            .unwrap_or_else(|| panic!("{path} not in {list:#?}"))
    }

    // Each entry kind is written under the name and type the OCI layer spec gives it, with
    // the given mode, owner, link target, device numbers and xattrs.
    #[test]
    fn entries_are_written_as_the_layer_spec_names_them() {
        let layer = layer(
            &[
                Entry::dir("etc"),
                Entry::file("/etc/hello", b"hi").with_owner(2020, 2021),
                Entry::file("etc/cap", b"x").with_xattr("security.capability", [1, 2, 0, 3]),
                Entry::symlink("etc/link", "/etc/hello"),
                Entry::hardlink("etc/hard", "/etc/hello"),
                Entry::whiteout("etc/motd"),
                Entry::whiteout("gone"),
                Entry::opaque_dir("var/cache/"),
                Entry::char_device("dev/null", 1, 3),
                Entry::dir("tmp").with_mode(0o1777),
            ],
            Compression::None,
        );
        let list = layer.list().expect("listing");
        let paths: Vec<String> = list.iter().map(ListedEntry::path_str).collect();
        assert_eq!(
            paths,
            [
                "etc/",
                "etc/hello",
                "etc/cap",
                "etc/link",
                "etc/hard",
                "etc/.wh.motd",
                ".wh.gone",
                "var/cache/.wh..wh..opq",
                "dev/null",
                "tmp/"
            ]
        );
        let hello = find(&list, "etc/hello");
        assert_eq!(
            (hello.uid, hello.gid, hello.mode, hello.size),
            (2020, 2021, 0o644, 2)
        );
        assert_eq!(
            find(&list, "etc/cap").xattrs,
            [("security.capability".to_owned(), vec![1, 2, 0, 3])]
        );
        let link = find(&list, "etc/link");
        assert_eq!(
            (link.kind, link.link_str()),
            (EntryType::Symlink, Some("/etc/hello".into()))
        );
        let hard = find(&list, "etc/hard");
        assert_eq!(
            (hard.kind, hard.link_str()),
            (EntryType::Link, Some("etc/hello".into()))
        );
        assert_eq!(find(&list, "dev/null").device, Some((1, 3)));
        assert_eq!(find(&list, "tmp/").mode, 0o1777);
        assert_eq!(layer.media_type(), MEDIA_TYPE_LAYER_TAR);
        assert_eq!(
            layer.digest(),
            layer.diff_id(),
            "an uncompressed blob is its own tar"
        );
    }

    // Raw entries keep names that normal entries refuse, including long ones, in both
    // long-name encodings.
    #[test]
    fn raw_entries_keep_malicious_names() {
        let long = format!("../{}", "a/".repeat(80));
        let long_legal = format!("{}f", "b/".repeat(90));
        for long_names in [LongNames::Pax, LongNames::Gnu] {
            let layer = LayerBuilder::new(Compression::Gzip)
                .long_names(long_names)
                .entries([
                    Entry::raw_file("../escape", b"x"),
                    Entry::raw_file("/abs/path", b"y"),
                    Entry::raw_symlink("evil", "../../../../etc"),
                    Entry::raw_hardlink("shadow", "/etc/shadow"),
                    Entry::raw_file(long.as_bytes(), b"z"),
                    Entry::file(&long_legal, b"long but legal"),
                ])
                .build()
                .expect("building");
            let list = layer.list().expect("listing");
            let paths: Vec<String> = list.iter().map(ListedEntry::path_str).collect();
            assert_eq!(
                paths,
                [
                    "../escape",
                    "/abs/path",
                    "evil",
                    "shadow",
                    long.as_str(),
                    long_legal.as_str(),
                ],
                "{long_names:?}"
            );
            assert_eq!(list[2].link_str().as_deref(), Some("../../../../etc"));
            assert_eq!(list[3].link_str().as_deref(), Some("/etc/shadow"));
        }
        let err = LayerBuilder::new(Compression::None)
            .entry(Entry::file("a/../../b", b""))
            .build()
            .expect_err("`..` outside Raw is refused");
        assert!(format!("{err:#}").contains("Entry::Raw"), "{err:#}");
    }

    // The same entries give the same digests, and each compression decodes to the same tar.
    #[test]
    fn layers_are_deterministic_across_compressions() {
        let entries = [Entry::dir("a"), Entry::file("a/b", b"hello".repeat(100))];
        let plain = layer(&entries, Compression::None);
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let one = layer(&entries, compression);
            let two = layer(&entries, compression);
            assert_eq!(one.info, two.info);
            assert_eq!(one.diff_id(), plain.diff_id());
            assert_eq!(one.media_type(), compression.media_type());
            let blob = one.blob_bytes().expect("blob");
            assert_eq!(sha256_digest(&blob), one.digest());
            assert_eq!(blob.len() as u64, one.size());
            assert_eq!(sha256_digest(&one.tar_bytes().expect("tar")), one.diff_id());
        }
    }

    // A PAX record's length prefix counts its own digits, including across a digit boundary.
    #[test]
    fn pax_record_lengths_count_themselves() {
        for value_len in 0..200 {
            let mut out = Vec::new();
            pax_record(&mut out, b"path", &vec![b'x'; value_len]);
            let (len, _) = std::str::from_utf8(&out)
                .expect("ascii")
                .split_once(' ')
                .expect("space");
            assert_eq!(len.parse::<usize>().expect("number"), out.len());
        }
    }
}
