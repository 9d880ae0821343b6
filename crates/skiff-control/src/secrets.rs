//! Secrets and ConfigMaps: stored, Secrets encrypted at rest, and read back (decrypted, in
//! memory only) when an instance starts.
//!
//! # Design
//! A Secret is stored at `/secrets/<ns>/<name>` as its metadata, type and key sizes in clear
//! (what `get` and `describe` show) and its values sealed with XChaCha20-Poly1305 under the
//! daemon's key, the store key as associated data (a sealed value moved to another key does
//! not open). Each envelope names its key by id, so a key rotation can rewrite every Secret
//! while both keys are readable:
//!
//! 1. a new key is written to `<key file>.next` (0600, fsynced);
//! 2. every Secret is re-sealed with it, in one store transaction;
//! 3. `<key file>.next` is renamed over the key file.
//!
//! A crash before 2 commits leaves every Secret under the old key; after it, under the new
//! one; either way both keys are loaded at the next start, which finishes the rotation. Writes
//! of Secrets and rotations are serialized by one lock, so no write seals with a key that is
//! about to be dropped.
//!
//! ConfigMaps are stored as they are (`/configmaps/<ns>/<name>`): they are not secret.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use skiff_api::config::{
    ConfigKind, ConfigMapView, Data, RotateKeyReport, SecretView, ValidatedConfig,
};
use skiff_api::object::ObjectMeta;
use skiff_api::types::RevisionSpec;
use skiff_store::{Store, Txn, TxnOutcome, keys};
use tracing::info;

use crate::controller::{ApplyResult, Clock, ControllerError};

/// Length of a key in bytes.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// Why the secret store failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key file could not be read or written.
    #[error("key file `{path}`: {message}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The key file could not be read or written.
    #[error("key file `{path}`")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A Secret is sealed with a key the daemon does not have.
    #[error("the Secret at `{key}` is sealed with key `{key_id}`, which is not loaded")]
    UnknownKey {
        /// The store key.
        key: String,
        /// The key id in its envelope.
        key_id: String,
    },
    /// A sealed value did not open (a wrong key, or tampering).
    #[error("the Secret at `{key}` does not decrypt with key `{key_id}`")]
    Decrypt {
        /// The store key.
        key: String,
        /// The key id in its envelope.
        key_id: String,
    },
}

/// One encryption key with its id.
#[derive(Clone)]
struct SealingKey {
    id: String,
    bytes: [u8; KEY_LEN],
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealingKey({})", self.id)
    }
}

impl SealingKey {
    fn new(bytes: [u8; KEY_LEN]) -> Self {
        SealingKey {
            id: key_id(&bytes),
            bytes,
        }
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&Key::from(self.bytes))
    }
}

/// The id of a key: the first 8 bytes of SHA-256 over a label and the key, in hex. It tells
/// keys apart and reveals nothing of them.
pub fn key_id(bytes: &[u8; KEY_LEN]) -> String {
    let mut h = sha2::Sha256::new();
    h.update(b"skiff secret key id\0");
    h.update(bytes);
    hex::encode(&h.finalize()[..8])
}

/// A sealed value: which key, the nonce and the ciphertext (with its tag), base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// `xchacha20poly1305`.
    pub alg: String,
    /// The id of the key that sealed it.
    pub key_id: String,
    /// The 24-byte nonce.
    pub nonce: String,
    /// Ciphertext and tag.
    pub ciphertext: String,
}

/// The keys the daemon seals and opens Secrets with: the current one, and during a rotation
/// the next one.
#[derive(Debug, Clone)]
pub struct Keyring {
    current: SealingKey,
    next: Option<SealingKey>,
}

impl Keyring {
    /// A keyring of `current` and, during a rotation, `next`.
    pub fn new(current: [u8; KEY_LEN], next: Option<[u8; KEY_LEN]>) -> Self {
        Keyring {
            current: SealingKey::new(current),
            next: next.map(SealingKey::new),
        }
    }

    /// The id of the key new values are sealed with.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    fn by_id(&self, id: &str) -> Option<&SealingKey> {
        std::iter::once(&self.current)
            .chain(self.next.as_ref())
            .find(|k| k.id == id)
    }

    /// Seals `plaintext` with the current key, bound to `aad` (the store key).
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Envelope {
        seal_with(&self.current, aad, plaintext)
    }

    /// Opens an envelope bound to `aad`.
    pub fn open(&self, aad: &str, env: &Envelope) -> Result<Vec<u8>, SecretError> {
        let key = self
            .by_id(&env.key_id)
            .ok_or_else(|| SecretError::UnknownKey {
                key: aad.to_owned(),
                key_id: env.key_id.clone(),
            })?;
        let failed = || SecretError::Decrypt {
            key: aad.to_owned(),
            key_id: env.key_id.clone(),
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let nonce: [u8; NONCE_LEN] = b64
            .decode(&env.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(failed)?;
        let ct = b64.decode(&env.ciphertext).map_err(|_| failed())?;
        key.cipher()
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| failed())
    }
}

fn seal_with(key: &SealingKey, aad: &str, plaintext: &[u8]) -> Envelope {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let ct = key
        .cipher()
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: aad.as_bytes(),
            },
        )
        // Encryption fails only for messages beyond 256 GiB; a Secret is at most 1 MiB.
        .expect("a Secret is small enough to seal");
    let b64 = base64::engine::general_purpose::STANDARD;
    Envelope {
        alg: "xchacha20poly1305".into(),
        key_id: key.id.clone(),
        nonce: b64.encode(nonce),
        ciphertext: b64.encode(ct),
    }
}

/// The key file and its `.next` sibling during a rotation.
#[derive(Debug, Clone)]
pub struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    /// The key file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        KeyFile { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn next_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".next");
        PathBuf::from(p)
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> SecretError {
        let path = path.to_owned();
        move |source| SecretError::Io { path, source }
    }

    fn read(&self, path: &Path) -> Result<Option<[u8; KEY_LEN]>, SecretError> {
        match std::fs::read(path) {
            Ok(bytes) => bytes
                .try_into()
                .map(Some)
                .map_err(|b: Vec<u8>| SecretError::KeyFile {
                    path: path.to_owned(),
                    message: format!("holds {} bytes; a key is {KEY_LEN} random bytes", b.len()),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(path)(e)),
        }
    }

    /// Writes a new random key to `path` (mode 0600, fsynced with its directory).
    fn create(&self, path: &Path) -> Result<[u8; KEY_LEN], SecretError> {
        let key: [u8; KEY_LEN] = rand::random();
        let tmp = {
            let mut p = path.to_owned().into_os_string();
            p.push(".tmp");
            PathBuf::from(p)
        };
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(self.io(&tmp))?;
        f.write_all(&key).map_err(self.io(&tmp))?;
        f.sync_all().map_err(self.io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(self.io(path))?;
        self.sync_dir()?;
        Ok(key)
    }

    fn sync_dir(&self) -> Result<(), SecretError> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io(dir))
    }

    /// Loads the key (creating it when missing) and, when a rotation was interrupted, the
    /// next key.
    pub fn load_or_create(&self) -> Result<Keyring, SecretError> {
        let current = match self.read(&self.path)? {
            Some(k) => k,
            None => {
                let k = self.create(&self.path)?;
                info!(path = %self.path.display(), "created the secret key");
                k
            }
        };
        let next = self.read(&self.next_path())?;
        Ok(Keyring::new(current, next))
    }

    /// Writes a new next key.
    fn create_next(&self) -> Result<[u8; KEY_LEN], SecretError> {
        self.create(&self.next_path())
    }

    /// Makes the next key the key (after every Secret is sealed with it).
    fn promote_next(&self) -> Result<(), SecretError> {
        let next = self.next_path();
        std::fs::rename(&next, &self.path).map_err(self.io(&self.path))?;
        self.sync_dir()
    }
}

/// A Secret as stored: what the API shows in clear, the values sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredSecret {
    metadata: ObjectMeta,
    #[serde(rename = "type")]
    type_: String,
    sizes: BTreeMap<String, u64>,
    sealed: Envelope,
}

/// A ConfigMap as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredConfigMap {
    metadata: ObjectMeta,
    data: Data,
}

/// What the secret store holds for one object, decrypted.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigObject {
    /// Its metadata (with `resourceVersion`).
    pub metadata: ObjectMeta,
    /// The Secret's type (`Opaque` for ConfigMaps).
    pub type_: String,
    /// The values.
    pub data: Data,
}

fn store_key(kind: ConfigKind, ns: &str, name: &str) -> String {
    match kind {
        ConfigKind::Secret => keys::secret(ns, name),
        ConfigKind::ConfigMap => keys::configmap(ns, name),
    }
}

fn not_found(kind: ConfigKind, ns: &str, name: &str) -> ControllerError {
    ControllerError::NotFound {
        kind: match kind {
            ConfigKind::Secret => "secret",
            ConfigKind::ConfigMap => "configmap",
        },
        namespace: ns.to_owned(),
        name: name.to_owned(),
    }
}

fn corrupt(key: &str) -> impl FnOnce(serde_json::Error) -> ControllerError {
    let key = key.to_owned();
    move |source| ControllerError::Corrupt { key, source }
}

/// Secrets and ConfigMaps in the store.
pub struct SecretStore {
    store: Arc<dyn Store>,
    keyring: RwLock<Keyring>,
    key_file: KeyFile,
    clock: Arc<dyn Clock>,
    /// Serializes Secret writes and key rotations.
    writes: tokio::sync::Mutex<()>,
}

impl SecretStore {
    /// Opens the secret store: loads (or creates) the key, and finishes a rotation a crash
    /// interrupted.
    pub async fn open(
        store: Arc<dyn Store>,
        key_file: KeyFile,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, ControllerError> {
        let me = Self::new(store, key_file, clock)?;
        let pending = me.keyring().next.is_some();
        if pending {
            info!("finishing a secret key rotation a restart interrupted");
            me.rotate_key().await?;
        }
        Ok(me)
    }

    /// The secret store with its key loaded (or created), without finishing an interrupted
    /// rotation (which [`SecretStore::open`] does).
    pub fn new(
        store: Arc<dyn Store>,
        key_file: KeyFile,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, ControllerError> {
        let keyring = key_file.load_or_create().map_err(secret_error)?;
        Ok(Arc::new(SecretStore {
            store,
            keyring: RwLock::new(keyring),
            key_file,
            clock,
            writes: tokio::sync::Mutex::new(()),
        }))
    }

    fn keyring(&self) -> Keyring {
        self.keyring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The id of the key Secrets are sealed with.
    pub fn key_id(&self) -> String {
        self.keyring().current.id
    }

    fn decode(
        &self,
        kind: ConfigKind,
        key: &str,
        value: &[u8],
        mod_revision: i64,
    ) -> Result<ConfigObject, ControllerError> {
        match kind {
            ConfigKind::Secret => {
                let s: StoredSecret = serde_json::from_slice(value).map_err(corrupt(key))?;
                let plain = self.keyring().open(key, &s.sealed).map_err(secret_error)?;
                let data: Data = serde_json::from_slice(&plain).map_err(corrupt(key))?;
                let mut metadata = s.metadata;
                metadata.resource_version = mod_revision.to_string();
                Ok(ConfigObject {
                    metadata,
                    type_: s.type_,
                    data,
                })
            }
            ConfigKind::ConfigMap => {
                let c: StoredConfigMap = serde_json::from_slice(value).map_err(corrupt(key))?;
                let mut metadata = c.metadata;
                metadata.resource_version = mod_revision.to_string();
                Ok(ConfigObject {
                    metadata,
                    type_: skiff_api::config::SECRET_TYPE_OPAQUE.to_owned(),
                    data: c.data,
                })
            }
        }
    }

    fn encode(
        &self,
        kind: ConfigKind,
        key: &str,
        obj: &ConfigObject,
        keyring: &Keyring,
    ) -> Vec<u8> {
        let mut metadata = obj.metadata.clone();
        metadata.resource_version = String::new();
        let value = match kind {
            ConfigKind::Secret => {
                let plain = serde_json::to_vec(&obj.data).expect("data serializes");
                serde_json::to_vec(&StoredSecret {
                    metadata,
                    type_: obj.type_.clone(),
                    sizes: obj.data.sizes(),
                    sealed: keyring.seal(key, &plain),
                })
            }
            ConfigKind::ConfigMap => serde_json::to_vec(&StoredConfigMap {
                metadata,
                data: obj.data.clone(),
            }),
        };
        value.expect("stored objects serialize")
    }

    /// One object, decrypted, if it exists.
    pub async fn get(
        &self,
        kind: ConfigKind,
        ns: &str,
        name: &str,
    ) -> Result<Option<ConfigObject>, ControllerError> {
        let key = store_key(kind, ns, name);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(self.decode(kind, &key, &kv.value, kv.mod_revision)?)),
            None => Ok(None),
        }
    }

    /// Every object of a kind, in one namespace or all, in key order.
    pub async fn list(
        &self,
        kind: ConfigKind,
        ns: Option<&str>,
    ) -> Result<Vec<ConfigObject>, ControllerError> {
        let prefix = match kind {
            ConfigKind::Secret => keys::secrets(ns),
            ConfigKind::ConfigMap => keys::configmaps(ns),
        };
        let mut out = Vec::new();
        for kv in self.store.list(&prefix).await? {
            out.push(self.decode(kind, &kv.key, &kv.value, kv.mod_revision)?);
        }
        Ok(out)
    }

    /// A Secret as the API shows it (keys and sizes).
    pub async fn secret_view(&self, ns: &str, name: &str) -> Result<SecretView, ControllerError> {
        self.get(ConfigKind::Secret, ns, name)
            .await?
            .map(secret_view)
            .ok_or_else(|| not_found(ConfigKind::Secret, ns, name))
    }

    /// A ConfigMap as the API shows it.
    pub async fn config_map_view(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<ConfigMapView, ControllerError> {
        self.get(ConfigKind::ConfigMap, ns, name)
            .await?
            .map(|o| ConfigMapView::new(o.metadata, &o.data))
            .ok_or_else(|| not_found(ConfigKind::ConfigMap, ns, name))
    }

    /// Creates or replaces a Secret or ConfigMap. With `dry_run`, only says what would happen.
    pub async fn apply(
        &self,
        v: ValidatedConfig,
        dry_run: bool,
    ) -> Result<(ApplyResult, ObjectMeta), ControllerError> {
        let _guard = self.writes.lock().await;
        let key = store_key(v.kind, &v.namespace, &v.name);
        let existing = self.store.get(&key).await?;
        let expected_rev = existing.as_ref().map_or(0, |kv| kv.mod_revision);
        if let Some(want) = &v.resource_version
            && *want != expected_rev.to_string()
        {
            return Err(ControllerError::Conflict {
                message: format!(
                    "{} `{}` changed since resourceVersion {want} (now {})",
                    v.kind,
                    v.name,
                    if expected_rev == 0 {
                        "absent".to_owned()
                    } else {
                        expected_rev.to_string()
                    }
                ),
            });
        }
        let old = match &existing {
            Some(kv) => Some(self.decode(v.kind, &key, &kv.value, kv.mod_revision)?),
            None => None,
        };
        let now = self.clock.now_rfc3339();
        let metadata = match &old {
            Some(o) => ObjectMeta {
                labels: v.labels.clone(),
                annotations: v.annotations.clone(),
                generation: o.metadata.generation
                    + i64::from(o.data != v.data || o.type_ != v.type_),
                ..o.metadata.clone()
            },
            None => ObjectMeta {
                name: v.name.clone(),
                namespace: v.namespace.clone(),
                generate_name: None,
                uid: uuid::Uuid::new_v4().to_string(),
                generation: 1,
                resource_version: String::new(),
                creation_timestamp: now,
                labels: v.labels.clone(),
                annotations: v.annotations.clone(),
            },
        };
        let obj = ConfigObject {
            metadata,
            type_: v.type_.clone(),
            data: v.data,
        };
        let result = match &old {
            None => ApplyResult::Created,
            Some(o) if o.data == obj.data && o.type_ == obj.type_ && o.metadata == obj.metadata => {
                return Ok((ApplyResult::Unchanged, o.metadata.clone()));
            }
            Some(_) => ApplyResult::Configured,
        };
        if dry_run {
            return Ok((result, obj.metadata));
        }
        let value = self.encode(v.kind, &key, &obj, &self.keyring());
        match self
            .store
            .txn(
                Txn::new()
                    .when_mod_revision(&key, expected_rev)
                    .put(&key, value),
            )
            .await?
        {
            TxnOutcome::Committed { revision } => {
                info!(kind = %v.kind, namespace = %v.namespace, name = %v.name, keys = obj.data.0.len(), result = result.as_str(), "stored");
                let mut metadata = obj.metadata;
                metadata.resource_version = revision.to_string();
                Ok((result, metadata))
            }
            TxnOutcome::Conflict { .. } => Err(ControllerError::Conflict {
                message: format!("{} `{}` changed meanwhile; apply again", v.kind, v.name),
            }),
        }
    }

    /// Deletes a Secret or ConfigMap.
    pub async fn delete(
        &self,
        kind: ConfigKind,
        ns: &str,
        name: &str,
    ) -> Result<(), ControllerError> {
        let _guard = self.writes.lock().await;
        let key = store_key(kind, ns, name);
        let Some(kv) = self.store.get(&key).await? else {
            return Err(not_found(kind, ns, name));
        };
        match self
            .store
            .txn(
                Txn::new()
                    .when_mod_revision(&key, kv.mod_revision)
                    .delete(&key),
            )
            .await?
        {
            TxnOutcome::Committed { .. } => {
                info!(kind = %kind, namespace = ns, name, "deleted");
                Ok(())
            }
            TxnOutcome::Conflict { .. } => Err(ControllerError::Conflict {
                message: format!("{kind} `{name}` changed meanwhile; delete again"),
            }),
        }
    }

    /// Re-seals every Secret under a new key (or, after an interrupted rotation, under the
    /// next key already written), crash-safely (see the module's design).
    pub async fn rotate_key(&self) -> Result<RotateKeyReport, ControllerError> {
        let _guard = self.writes.lock().await;
        let mut ring = self.keyring();
        let next = match &ring.next {
            Some(n) => n.clone(),
            None => {
                let bytes = self.key_file.create_next().map_err(secret_error)?;
                let k = SealingKey::new(bytes);
                ring.next = Some(k.clone());
                *self.keyring.write().unwrap_or_else(|p| p.into_inner()) = ring.clone();
                k
            }
        };
        let listing = self.store.list(keys::SECRETS).await?;
        let mut txn = Txn::new();
        let mut rewritten = 0;
        for kv in &listing.kvs {
            let s: StoredSecret = serde_json::from_slice(&kv.value).map_err(corrupt(&kv.key))?;
            if s.sealed.key_id == next.id {
                continue;
            }
            let plain = ring.open(&kv.key, &s.sealed).map_err(secret_error)?;
            let resealed = StoredSecret {
                sealed: seal_with(&next, &kv.key, &plain),
                ..s
            };
            txn = txn.when_mod_revision(&kv.key, kv.mod_revision).put(
                &kv.key,
                serde_json::to_vec(&resealed).expect("stored objects serialize"),
            );
            rewritten += 1;
        }
        if rewritten > 0
            && let TxnOutcome::Conflict { key, .. } = self.store.txn(txn).await?
        {
            return Err(ControllerError::Conflict {
                message: format!("`{key}` changed during the key rotation; rotate again"),
            });
        }
        self.key_file.promote_next().map_err(secret_error)?;
        *self.keyring.write().unwrap_or_else(|p| p.into_inner()) = Keyring {
            current: next.clone(),
            next: None,
        };
        info!(key_id = %next.id, rewritten, "secret key rotated");
        Ok(RotateKeyReport {
            key_id: next.id,
            rewritten,
        })
    }
}

/// A Secret as the API shows it.
pub fn secret_view(o: ConfigObject) -> SecretView {
    SecretView::new(o.metadata, o.type_, &o.data)
}

fn secret_error(e: SecretError) -> ControllerError {
    ControllerError::Secret(e)
}

/// The Secrets and ConfigMaps a revision references (env, envFrom, volumes).
pub fn references(spec: &RevisionSpec) -> BTreeSet<(ConfigKind, String)> {
    let mut out = BTreeSet::new();
    for v in &spec.volumes {
        for (is_secret, name, _, _) in v.config_sources() {
            let kind = if is_secret {
                ConfigKind::Secret
            } else {
                ConfigKind::ConfigMap
            };
            if let Some(n) = name {
                out.insert((kind, n.to_owned()));
            }
        }
    }
    for c in &spec.containers {
        for e in &c.env {
            let Some(from) = &e.value_from else { continue };
            if let Some(n) = from.secret_key_ref.as_ref().and_then(|s| s.name.clone()) {
                out.insert((ConfigKind::Secret, n));
            }
            if let Some(n) = from
                .config_map_key_ref
                .as_ref()
                .and_then(|s| s.name.clone())
            {
                out.insert((ConfigKind::ConfigMap, n));
            }
        }
        for e in &c.env_from {
            if let Some(n) = e.secret_ref.as_ref().and_then(|s| s.name.clone()) {
                out.insert((ConfigKind::Secret, n));
            }
            if let Some(n) = e.config_map_ref.as_ref().and_then(|s| s.name.clone()) {
                out.insert((ConfigKind::ConfigMap, n));
            }
        }
    }
    out
}

/// The registry credentials of a revision's `imagePullSecrets`: every existing
/// `kubernetes.io/dockerconfigjson` Secret named, the first one naming a registry winning.
/// A missing Secret is skipped (as Kubernetes does: the pull may not need it); one of
/// another type or with an unreadable config is skipped with a warning naming it.
pub async fn pull_credentials(
    secrets: &SecretStore,
    revision: &skiff_api::object::Revision,
) -> Result<skiff_image::auth::CredentialStore, ControllerError> {
    let mut out = skiff_image::auth::CredentialStore::default();
    let ns = &revision.metadata.namespace;
    for r in &revision.spec.image_pull_secrets {
        let Some(name) = r.name.as_deref() else {
            continue;
        };
        let Some(o) = secrets.get(ConfigKind::Secret, ns, name).await? else {
            continue;
        };
        if o.type_ != skiff_api::config::SECRET_TYPE_DOCKER_CONFIG_JSON {
            tracing::warn!(namespace = %ns, secret = name, r#type = %o.type_, "an imagePullSecret is not of type kubernetes.io/dockerconfigjson; not used");
            continue;
        }
        let auths = o
            .data
            .0
            .get(skiff_api::config::DOCKER_CONFIG_JSON_KEY)
            .map(|b| skiff_api::config::docker_auths(b));
        match auths {
            Some(Ok(auths)) => {
                for (host, (username, password)) in auths {
                    if out.get(&host).is_none() {
                        out.insert(&host, skiff_image::auth::Credentials { username, password });
                    }
                }
            }
            _ => {
                tracing::warn!(namespace = %ns, secret = name, "an imagePullSecret holds no usable Docker config.json; not used")
            }
        }
    }
    Ok(out)
}

/// The kind, namespace and name of a Secret or ConfigMap store key.
pub fn parse_config_key(key: &str) -> Option<(ConfigKind, &str, &str)> {
    if let Some((ns, n)) = keys::parse_secret(key) {
        return Some((ConfigKind::Secret, ns, n));
    }
    keys::parse_configmap(key).map(|(ns, n)| (ConfigKind::ConfigMap, ns, n))
}

/// Reads what a revision references, for one instance start: absent objects are left out
/// (the plan decides whether that is allowed).
pub async fn values_for(
    secrets: &SecretStore,
    ns: &str,
    spec: &RevisionSpec,
) -> Result<crate::plan::ConfigValues, ControllerError> {
    let mut values = crate::plan::ConfigValues::default();
    for (kind, name) in references(spec) {
        if let Some(o) = secrets.get(kind, ns, &name).await? {
            values.insert(kind, name, o.data);
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "/secrets/default/db";

    /// A value sealed with a key opens with it and only with it, and only at its store key.
    #[test]
    fn seal_and_open() {
        let ring = Keyring::new([7; KEY_LEN], None);
        let env = ring.seal(KEY, b"hunter2");
        assert_eq!(env.key_id, ring.current_id());
        assert!(!env.ciphertext.contains("hunter2"));
        assert_eq!(ring.open(KEY, &env).expect("opens"), b"hunter2");
        // Same plaintext, new nonce: different ciphertext.
        assert_ne!(ring.seal(KEY, b"hunter2").ciphertext, env.ciphertext);
        // Moved to another key of the store: refused.
        assert!(matches!(
            ring.open("/secrets/default/other", &env),
            Err(SecretError::Decrypt { .. })
        ));
        // A wrong key with the same id (tampering with the id) does not open either.
        let wrong = Keyring::new([8; KEY_LEN], None);
        assert!(matches!(
            wrong.open(KEY, &env),
            Err(SecretError::UnknownKey { .. })
        ));
        let mut forged = wrong.seal(KEY, b"x");
        forged.key_id = env.key_id.clone();
        assert!(matches!(
            ring.open(KEY, &forged),
            Err(SecretError::Decrypt { .. })
        ));
        // A flipped ciphertext bit is detected.
        let mut bad = env.clone();
        let mut ct = base64::engine::general_purpose::STANDARD
            .decode(&bad.ciphertext)
            .expect("b64");
        ct[0] ^= 1;
        bad.ciphertext = base64::engine::general_purpose::STANDARD.encode(ct);
        assert!(ring.open(KEY, &bad).is_err());
        // Errors and Debug never show key material.
        assert!(!format!("{ring:?}").contains("7, 7"));
    }

    /// During a rotation both keys open; after it, only the new one.
    #[test]
    fn rotation_keyring() {
        let old = Keyring::new([1; KEY_LEN], None);
        let sealed_old = old.seal(KEY, b"v");
        let both = Keyring::new([1; KEY_LEN], Some([2; KEY_LEN]));
        assert_eq!(both.open(KEY, &sealed_old).expect("old opens"), b"v");
        let new_only = Keyring::new([2; KEY_LEN], None);
        let sealed_new = seal_with(&SealingKey::new([2; KEY_LEN]), KEY, b"v");
        assert_eq!(both.open(KEY, &sealed_new).expect("new opens"), b"v");
        assert_eq!(new_only.open(KEY, &sealed_new).expect("new opens"), b"v");
        assert!(new_only.open(KEY, &sealed_old).is_err());
    }

    /// The key file is created once (0600, 32 bytes) and read back; a wrong size is refused.
    #[test]
    fn key_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let kf = KeyFile::new(dir.path().join("secret.key"));
        let a = kf.load_or_create().expect("created");
        let meta = std::fs::metadata(kf.path()).expect("exists");
        assert_eq!(meta.len(), KEY_LEN as u64);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let b = kf.load_or_create().expect("read");
        assert_eq!(a.current_id(), b.current_id());
        assert!(b.next.is_none());
        std::fs::write(kf.path(), b"short").expect("write");
        let e = kf.load_or_create().expect_err("wrong size");
        assert!(e.to_string().contains("secret.key"), "{e}");
    }

    /// Revisions reference Secrets and ConfigMaps through env and envFrom.
    #[test]
    fn references_of_a_revision() {
        let spec: RevisionSpec = serde_json::from_value(serde_json::json!({
            "containers": [{
                "image": "x",
                "env": [
                    {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}},
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "c1", "key": "k"}}},
                    {"name": "C", "value": "plain"}
                ],
                "envFrom": [{"secretRef": {"name": "s2"}}, {"configMapRef": {"name": "c1"}}]
            }]
        }))
        .expect("spec");
        let refs: Vec<(ConfigKind, String)> = references(&spec).into_iter().collect();
        assert_eq!(
            refs,
            [
                (ConfigKind::Secret, "s1".to_owned()),
                (ConfigKind::Secret, "s2".to_owned()),
                (ConfigKind::ConfigMap, "c1".to_owned()),
            ]
        );
        assert_eq!(
            parse_config_key("/secrets/ns/s1"),
            Some((ConfigKind::Secret, "ns", "s1"))
        );
        assert_eq!(
            parse_config_key("/configmaps/ns/c"),
            Some((ConfigKind::ConfigMap, "ns", "c"))
        );
        assert_eq!(parse_config_key("/registry/services/ns/c"), None);
    }
}
