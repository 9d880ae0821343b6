//! Kubernetes `v1` `Secret` and `ConfigMap`: the manifests users write, their validation with
//! field paths, and the views the API returns.
//!
//! # Design
//! `data` and `stringData` are read as plain JSON values, not as typed strings: a type error
//! from serde quotes the value it found, and a Secret's value must never appear in an error.
//! Every message here names the path (`data.KEY`) and never the value.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::names::check_dns1123_subdomain;
use crate::object::ObjectMeta;
use crate::problems::{FieldPath, Problems};
use crate::types::null_default;

/// `apiVersion` of Secrets and ConfigMaps.
pub const CORE_API_VERSION: &str = "v1";
/// `type` of a Secret holding arbitrary keys (the default).
pub const SECRET_TYPE_OPAQUE: &str = "Opaque";
/// `type` of a Secret holding a Docker `config.json` under [`DOCKER_CONFIG_JSON_KEY`].
pub const SECRET_TYPE_DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
/// The key of a `kubernetes.io/dockerconfigjson` Secret.
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
/// The Secret types skiff accepts.
pub const SECRET_TYPES: &[&str] = &[SECRET_TYPE_OPAQUE, SECRET_TYPE_DOCKER_CONFIG_JSON];
/// Largest total size of a Secret's or ConfigMap's values (Kubernetes: 1 MiB).
pub const MAX_DATA_BYTES: usize = 1 << 20;

/// The metadata a user may set on a Secret or ConfigMap.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMeta {
    /// The name, a DNS-1123 subdomain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The namespace; `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// When set, the update applies only if the stored object still has this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// A Secret as a user writes it.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretManifest {
    /// Must be `v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Must be `Secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name, namespace, labels, annotations.
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: ConfigMeta,
    /// `Opaque` (default) or `kubernetes.io/dockerconfigjson`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Values, base64-encoded.
    #[serde(default, deserialize_with = "null_default")]
    #[schema(value_type = BTreeMap<String, String>)]
    pub data: BTreeMap<String, Value>,
    /// Values as plain text (win over `data` for the same key).
    #[serde(default, deserialize_with = "null_default")]
    #[schema(value_type = BTreeMap<String, String>)]
    pub string_data: BTreeMap<String, Value>,
    /// Only `false` (the default): immutable objects are not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

impl fmt::Debug for SecretManifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretManifest")
            .field("metadata", &self.metadata)
            .field("type", &self.type_)
            .field("data", &self.data.keys().collect::<Vec<_>>())
            .field("string_data", &self.string_data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A ConfigMap as a user writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapManifest {
    /// Must be `v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Must be `ConfigMap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name, namespace, labels, annotations.
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: ConfigMeta,
    /// Values as text.
    #[serde(default, deserialize_with = "null_default")]
    #[schema(value_type = BTreeMap<String, String>)]
    pub data: BTreeMap<String, Value>,
    /// Values base64-encoded.
    #[serde(default, deserialize_with = "null_default")]
    #[schema(value_type = BTreeMap<String, String>)]
    pub binary_data: BTreeMap<String, Value>,
    /// Only `false` (the default): immutable objects are not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

/// Values by key. `Debug` shows the keys and sizes only, so a value never reaches a log.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data(pub BTreeMap<String, Vec<u8>>);

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(k, v)| (k, format!("<{} bytes>", v.len()))),
            )
            .finish()
    }
}

impl Data {
    /// Sizes by key.
    pub fn sizes(&self) -> BTreeMap<String, u64> {
        self.0
            .iter()
            .map(|(k, v)| (k.clone(), v.len() as u64))
            .collect()
    }

    /// Total size of the values.
    pub fn total(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }
}

/// A Secret or ConfigMap that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedConfig {
    /// `Secret` or `ConfigMap`.
    pub kind: ConfigKind,
    /// The name.
    pub name: String,
    /// The namespace (defaulted).
    pub namespace: String,
    /// The namespace as the manifest gives it.
    pub manifest_namespace: Option<String>,
    /// The Secret's type (`Opaque` for ConfigMaps too, unused there).
    pub type_: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// The version the write is conditional on.
    pub resource_version: Option<String>,
    /// The decoded values.
    pub data: Data,
}

/// Which kind of configuration object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConfigKind {
    /// A `v1` Secret.
    Secret,
    /// A `v1` ConfigMap.
    ConfigMap,
}

impl ConfigKind {
    /// `Secret` or `ConfigMap`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigKind::Secret => "Secret",
            ConfigKind::ConfigMap => "ConfigMap",
        }
    }
}

impl fmt::Display for ConfigKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a key of a Secret or ConfigMap: Kubernetes' `[-._a-zA-Z0-9]+`, at most 253
/// characters, not `.` or `..`.
pub fn check_data_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a key must not be empty".into());
    }
    if key.len() > 253 {
        return Err("a key must be at most 253 characters".into());
    }
    if key == "." || key == ".." {
        return Err("a key must not be `.` or `..`".into());
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(
            "a key may contain only letters, digits, `-`, `_` and `.` (Kubernetes: [-._a-zA-Z0-9]+)"
                .into(),
        );
    }
    Ok(())
}

fn check_meta(
    kind: ConfigKind,
    api_version: Option<&str>,
    k: Option<&str>,
    meta: &ConfigMeta,
    p: &mut Problems,
) -> Option<(String, String)> {
    let root = FieldPath::root();
    match api_version {
        None => p.required(&root.key("apiVersion")),
        Some(CORE_API_VERSION) => {}
        Some(v) => p.invalid(
            &root.key("apiVersion"),
            format!("`{v}` is not accepted: a {kind} is `{CORE_API_VERSION}`"),
        ),
    }
    match k {
        None => p.required(&root.key("kind")),
        Some(k) if k == kind.as_str() => {}
        Some(k) => p.invalid(
            &root.key("kind"),
            format!("`{k}` is not accepted: must be `{kind}`"),
        ),
    }
    let mp = root.key("metadata");
    let name = match &meta.name {
        None => {
            p.required(&mp.key("name"));
            None
        }
        Some(n) => match check_dns1123_subdomain(n) {
            Ok(()) => Some(n.clone()),
            Err(e) => {
                p.invalid(&mp.key("name"), e);
                None
            }
        },
    };
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| crate::validate::DEFAULT_NAMESPACE.to_owned());
    if let Err(e) = crate::names::check_dns1123_label(&namespace) {
        p.invalid(&mp.key("namespace"), e);
    }
    name.map(|n| (n, namespace))
}

/// Adds `key`'s value to `out`, checking the key and, for `base64`, the encoding. Messages
/// name the path, never the value.
fn take_value(
    out: &mut BTreeMap<String, Vec<u8>>,
    at: &FieldPath,
    key: &str,
    value: &Value,
    base64: bool,
    p: &mut Problems,
) {
    let path = at.key(key);
    if let Err(e) = check_data_key(key) {
        p.invalid(&path, e);
        return;
    }
    let Some(s) = value.as_str() else {
        p.invalid(&path, "must be a string (quote it)");
        return;
    };
    if base64 {
        // Kubernetes accepts standard base64 with padding; whitespace (as `base64` wraps
        // lines) is ignored.
        let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        match base64::engine::general_purpose::STANDARD.decode(compact.as_bytes()) {
            Ok(bytes) => {
                out.insert(key.to_owned(), bytes);
            }
            Err(_) => p.invalid(&path, "not valid base64 (standard alphabet, with padding)"),
        }
    } else {
        out.insert(key.to_owned(), s.as_bytes().to_vec());
    }
}

/// `immutable: true` is refused by name: skiff would not keep the promise yet.
fn check_immutable(immutable: Option<bool>, p: &mut Problems) {
    if immutable == Some(true) {
        p.not_supported(
            &FieldPath::root().key("immutable"),
            "immutable Secrets and ConfigMaps",
        );
    }
}

/// Checks a Secret manifest.
pub fn validate_secret(m: SecretManifest, p: &mut Problems) -> Option<ValidatedConfig> {
    let root = FieldPath::root();
    let ids = check_meta(
        ConfigKind::Secret,
        m.api_version.as_deref(),
        m.kind.as_deref(),
        &m.metadata,
        p,
    );
    let type_ = m
        .type_
        .clone()
        .unwrap_or_else(|| SECRET_TYPE_OPAQUE.to_owned());
    if !SECRET_TYPES.contains(&type_.as_str()) {
        p.not_supported(
            &root.key("type"),
            format!(
                "the Secret type `{type_}`; supported: {}",
                SECRET_TYPES.join(", ")
            ),
        );
    }
    check_immutable(m.immutable, p);
    let mut data = BTreeMap::new();
    for (k, v) in &m.data {
        take_value(&mut data, &root.key("data"), k, v, true, p);
    }
    for (k, v) in &m.string_data {
        take_value(&mut data, &root.key("stringData"), k, v, false, p);
    }
    let data = Data(data);
    if data.total() > MAX_DATA_BYTES {
        p.invalid(
            &root.key("data"),
            format!(
                "the values total {} bytes; a Secret holds at most {MAX_DATA_BYTES} (1 MiB)",
                data.total()
            ),
        );
    }
    if type_ == SECRET_TYPE_DOCKER_CONFIG_JSON {
        check_docker_config(&data, p);
    }
    let (name, namespace) = ids?;
    Some(ValidatedConfig {
        kind: ConfigKind::Secret,
        name,
        namespace,
        manifest_namespace: m.metadata.namespace,
        type_,
        labels: m.metadata.labels,
        annotations: m.metadata.annotations,
        resource_version: m.metadata.resource_version,
        data,
    })
}

/// A `kubernetes.io/dockerconfigjson` Secret must hold `.dockerconfigjson`, a JSON object
/// with `auths`.
fn check_docker_config(data: &Data, p: &mut Problems) {
    let path = FieldPath::root().key("data").key(DOCKER_CONFIG_JSON_KEY);
    match data.0.get(DOCKER_CONFIG_JSON_KEY) {
        None => p.required(&path),
        Some(bytes) => match docker_auths(bytes) {
            Ok(_) => {}
            Err(e) => p.invalid(&path, e),
        },
    }
}

/// Registry credentials of a Docker `config.json`: host to (user, password). Errors never
/// quote the document.
pub fn docker_auths(bytes: &[u8]) -> Result<BTreeMap<String, (String, String)>, String> {
    #[derive(Deserialize)]
    struct DockerConfig {
        auths: Option<BTreeMap<String, DockerAuth>>,
    }
    #[derive(Deserialize)]
    struct DockerAuth {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let cfg: DockerConfig = serde_json::from_slice(bytes)
        .map_err(|_| "must be a Docker config.json: a JSON object with `auths`".to_owned())?;
    let auths = cfg
        .auths
        .ok_or_else(|| "must be a Docker config.json: a JSON object with `auths`".to_owned())?;
    let mut out = BTreeMap::new();
    for (host, a) in auths {
        let pair = match (a.username, a.password, a.auth) {
            (Some(u), Some(pw), _) => (u, pw),
            (_, _, Some(auth)) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|_| format!("`auths.{host}.auth` is not valid base64"))?;
                let text = String::from_utf8(raw)
                    .map_err(|_| format!("`auths.{host}.auth` is not UTF-8"))?;
                let (u, pw) = text
                    .split_once(':')
                    .ok_or_else(|| format!("`auths.{host}.auth` must encode `user:password`"))?;
                (u.to_owned(), pw.to_owned())
            }
            _ => {
                return Err(format!(
                    "`auths.{host}` has neither auth nor username and password"
                ));
            }
        };
        out.insert(host, pair);
    }
    Ok(out)
}

/// Checks a ConfigMap manifest.
pub fn validate_config_map(m: ConfigMapManifest, p: &mut Problems) -> Option<ValidatedConfig> {
    let root = FieldPath::root();
    let ids = check_meta(
        ConfigKind::ConfigMap,
        m.api_version.as_deref(),
        m.kind.as_deref(),
        &m.metadata,
        p,
    );
    check_immutable(m.immutable, p);
    let mut data = BTreeMap::new();
    for (k, v) in &m.data {
        take_value(&mut data, &root.key("data"), k, v, false, p);
    }
    for (k, v) in &m.binary_data {
        if m.data.contains_key(k) {
            p.invalid(
                &root.key("binaryData").key(k.clone()),
                "the key is also in `data`",
            );
        }
        take_value(&mut data, &root.key("binaryData"), k, v, true, p);
    }
    let data = Data(data);
    if data.total() > MAX_DATA_BYTES {
        p.invalid(
            &root.key("data"),
            format!(
                "the values total {} bytes; a ConfigMap holds at most {MAX_DATA_BYTES} (1 MiB)",
                data.total()
            ),
        );
    }
    let (name, namespace) = ids?;
    Some(ValidatedConfig {
        kind: ConfigKind::ConfigMap,
        name,
        namespace,
        manifest_namespace: m.metadata.namespace,
        type_: SECRET_TYPE_OPAQUE.to_owned(),
        labels: m.metadata.labels,
        annotations: m.metadata.annotations,
        resource_version: m.metadata.resource_version,
        data,
    })
}

/// A Secret as the API shows it: keys and sizes, never values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretView {
    /// `v1`.
    pub api_version: String,
    /// `Secret`.
    pub kind: String,
    /// Name, namespace, uid, resourceVersion, …
    pub metadata: ObjectMeta,
    /// The Secret's type.
    #[serde(rename = "type")]
    pub type_: String,
    /// The size in bytes of each key's value.
    pub sizes: BTreeMap<String, u64>,
}

/// A ConfigMap as the API shows it (values included: ConfigMaps are not secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapView {
    /// `v1`.
    pub api_version: String,
    /// `ConfigMap`.
    pub kind: String,
    /// Name, namespace, uid, resourceVersion, …
    pub metadata: ObjectMeta,
    /// Values that are UTF-8 text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Other values, base64-encoded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_data: BTreeMap<String, String>,
}

impl SecretView {
    /// The view of a Secret of type `type_` holding `data`: its keys and their sizes.
    pub fn new(metadata: ObjectMeta, type_: String, data: &Data) -> Self {
        SecretView {
            api_version: CORE_API_VERSION.into(),
            kind: "Secret".into(),
            metadata,
            type_,
            sizes: data.sizes(),
        }
    }
}

impl ConfigMapView {
    /// The view of `data`.
    pub fn new(metadata: ObjectMeta, data: &Data) -> Self {
        let mut text = BTreeMap::new();
        let mut binary = BTreeMap::new();
        for (k, v) in &data.0 {
            match std::str::from_utf8(v) {
                Ok(s) => {
                    text.insert(k.clone(), s.to_owned());
                }
                Err(_) => {
                    binary.insert(
                        k.clone(),
                        base64::engine::general_purpose::STANDARD.encode(v),
                    );
                }
            }
        }
        ConfigMapView {
            api_version: CORE_API_VERSION.into(),
            kind: "ConfigMap".into(),
            metadata,
            data: text,
            binary_data: binary,
        }
    }
}

/// The answer to `skiff secrets rotate-key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotateKeyReport {
    /// The id of the key every Secret is now encrypted with.
    pub key_id: String,
    /// How many Secrets were re-encrypted.
    pub rewritten: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(v: serde_json::Value) -> (Option<ValidatedConfig>, Vec<(String, String)>) {
        let m: SecretManifest = serde_json::from_value(v).expect("shape");
        let mut p = Problems::new();
        let out = validate_secret(m, &mut p);
        let list = p
            .iter()
            .map(|(path, _, msg)| (path.to_string(), msg.to_owned()))
            .collect();
        (out, list)
    }

    /// data is base64, stringData plain text and wins for the same key.
    #[test]
    fn decodes_data_and_string_data() {
        let (s, p) = secret(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
            "data": {"user": "YWRtaW4=", "pw": "b2xk"}, "stringData": {"pw": "new"}
        }));
        assert!(p.is_empty(), "{p:?}");
        let s = s.expect("valid");
        assert_eq!(s.namespace, "default");
        assert_eq!(s.type_, "Opaque");
        assert_eq!(s.data.0["user"], b"admin");
        assert_eq!(s.data.0["pw"], b"new");
    }

    /// Bad base64, a key with `/`, a missing name: each at its path, no value quoted.
    #[test]
    fn problems_name_paths_not_values() {
        let (_, p) = secret(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {},
            "data": {"k": "%%%not-base64-SECRETVALUE"}, "stringData": {"a/b": "SECRETVALUE", "n": 5}
        }));
        let paths: Vec<&str> = p.iter().map(|(a, _)| a.as_str()).collect();
        assert!(paths.contains(&"metadata.name"), "{p:?}");
        assert!(paths.contains(&"data.k"), "{p:?}");
        assert!(paths.contains(&"stringData.a/b"), "{p:?}");
        assert!(paths.contains(&"stringData.n"), "{p:?}");
        for (_, m) in &p {
            assert!(!m.contains("SECRETVALUE"), "{m}");
        }
        assert!(
            format!(
                "{:?}",
                Data([("k".to_owned(), b"SECRETVALUE".to_vec())].into())
            )
            .contains("11 bytes")
        );
    }

    /// More than 1 MiB in all is refused.
    #[test]
    fn a_secret_over_1_mib_is_refused() {
        let big = "x".repeat(MAX_DATA_BYTES);
        let (_, p) = secret(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "big"},
            "stringData": {"a": big, "b": "y"}
        }));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "data");
        assert!(p[0].1.contains("1 MiB"));
    }

    /// Types: Opaque and dockerconfigjson (which must hold a config.json); others refused.
    #[test]
    fn secret_types() {
        let (_, p) = secret(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "t"},
            "type": "kubernetes.io/tls"
        }));
        assert_eq!(p[0].0, "type");
        let (_, p) = secret(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "t"},
            "type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": "{}"}
        }));
        assert_eq!(p[0].0, "data..dockerconfigjson", "{p:?}");
        let cfg =
            r#"{"auths":{"r.io":{"auth":"dTpw"}, "q.io": {"username": "a", "password": "b"}}}"#;
        let (s, p) = secret(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "t"},
            "type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": cfg}
        }));
        assert!(p.is_empty(), "{p:?}");
        let auths = docker_auths(&s.expect("valid").data.0[DOCKER_CONFIG_JSON_KEY]).expect("auths");
        assert_eq!(auths["r.io"], ("u".into(), "p".into()));
        assert_eq!(auths["q.io"], ("a".into(), "b".into()));
    }

    /// `immutable: true` is refused by name; `false` is the default.
    #[test]
    fn immutable_is_refused() {
        let (_, p) = secret(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "i"}, "immutable": true
        }));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, "immutable");
        assert!(p[0].1.contains("not supported by skiff yet"));
        let (_, p) = secret(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "i"}, "immutable": false
        }));
        assert!(p.is_empty());
    }

    /// Keys follow Kubernetes' rule.
    #[test]
    fn data_keys() {
        for ok in ["a", "A-b_c.d", ".dockerconfigjson", "0"] {
            assert!(check_data_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "ä"] {
            assert!(check_data_key(bad).is_err(), "{bad}");
        }
    }

    /// ConfigMaps: data text, binaryData base64, a key in both refused.
    #[test]
    fn config_maps() {
        let m: ConfigMapManifest = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"a": "1", "b": "2"}, "binaryData": {"bin": "/w==", "b": "Mg=="}
        }))
        .expect("shape");
        let mut p = Problems::new();
        let c = validate_config_map(m, &mut p).expect("named");
        let list: Vec<String> = p.iter().map(|(a, _, _)| a.to_string()).collect();
        assert_eq!(list, ["binaryData.b"]);
        assert_eq!(c.data.0["bin"], [0xffu8]);
        let view = ConfigMapView::new(ObjectMeta::default(), &c.data);
        assert_eq!(view.binary_data["bin"], "/w==");
        assert_eq!(view.data["a"], "1");
    }
}
