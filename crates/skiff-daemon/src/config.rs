//! The daemon's configuration: one [`Config`] read from a TOML file, then overridden by
//! `SKIFF_*` environment variables, then by command-line flags, and validated as a whole
//! before anything starts, with every problem reported at once and attributed to its source.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_telemetry::LogFormat;

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/skiff";
/// Default API address.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:7070";
/// Default HTTP ingress address.
pub const DEFAULT_INGRESS_LISTEN: &str = "127.0.0.1:8080";
/// Default domain: `*.localhost` resolves to loopback without any DNS set-up.
pub const DEFAULT_DOMAIN: &str = "localhost";
/// Config file read when none is named and it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/skiff/skiff.toml";

/// The validated configuration of a daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the state store, the API token and (later) images and logs live.
    pub data_dir: PathBuf,
    /// Address of the REST API.
    pub api_listen: SocketAddr,
    /// Address of the HTTP ingress that routes to services.
    pub ingress_listen: SocketAddr,
    /// Domain of service URLs: `http://<service>.<namespace>.<domain>`.
    pub domain: String,
    /// Log filter, in `tracing-subscriber`'s `EnvFilter` syntax.
    pub log: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// Largest API request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long shutdown waits for in-flight API requests.
    pub shutdown_grace_period: Duration,
    /// How long a stopped instance's containers have between SIGTERM and SIGKILL (Cloud
    /// Run's 10 s); its requests in flight are drained before, up to `timeoutSeconds`.
    pub termination_grace_period: Duration,
    /// A Docker `config.json` with registry credentials (`auths`).
    pub registry_auth_file: Option<PathBuf>,
    /// Registries reached over plain HTTP (loopback ones always are).
    pub insecure_registries: Vec<String>,
    /// Mirrors per registry, tried in order before the registry itself.
    pub registry_mirrors: BTreeMap<String, Vec<String>>,
    /// The OCI runtime binary: `runc` or `crun`.
    pub runtime: String,
    /// The pids limit of every container.
    pub pids_limit: i64,
    /// How long an idle revision keeps its last instance before going to zero (Knative's
    /// cluster-wide `scale-to-zero-grace-period`).
    pub scale_to_zero_grace_period: Duration,
    /// Whether idle revisions may go to zero (Knative's `enable-scale-to-zero`); when not,
    /// every revision keeps at least one instance.
    pub enable_scale_to_zero: bool,
    /// Most growth per autoscaler decision, as a factor of ready instances (Knative's
    /// `max-scale-up-rate`).
    pub max_scale_up_rate: f64,
    /// Most shrinking per decision, as a divisor of ready instances (Knative's
    /// `max-scale-down-rate`).
    pub max_scale_down_rate: f64,
    /// Most requests that may wait for instances of one revision (the activator's queue).
    pub activator_queue_depth: usize,
    /// Longest a request waits in the activator for an instance with room.
    pub activator_queue_timeout: Duration,
    /// Threads the router serves on; 0 means one per core.
    pub router_threads: usize,
    /// Most client connections the ingress keeps open; 0 means a share of the open-file
    /// limit ([`INGRESS_FD_SHARE_PERCENT`]).
    pub ingress_max_connections: usize,
    /// Longest a new ingress connection may take to send a complete request head (from
    /// accept), and a started head to finish.
    pub ingress_header_read_timeout: Duration,
    /// Longest an ingress connection may stay open without a request in flight.
    pub ingress_idle_timeout: Duration,
    /// Most client connections the API keeps open.
    pub api_max_connections: usize,
}

/// The share of the open-file limit the ingress's connections may use by default (each may
/// also hold a connection into an instance).
pub const INGRESS_FD_SHARE_PERCENT: u64 = 40;

impl Config {
    /// The registry settings the image puller uses.
    pub fn image_settings(&self) -> skiff_control::images::ImageSettings {
        skiff_control::images::ImageSettings {
            registry_auth_file: self.registry_auth_file.clone(),
            insecure_registries: self.insecure_registries.clone(),
            registry_mirrors: self.registry_mirrors.clone(),
        }
    }

    /// The defaults, as `skiff server` runs with no file, environment or flags.
    pub fn defaults() -> Self {
        Config {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            api_listen: DEFAULT_API_LISTEN.parse().expect("constant address"),
            ingress_listen: DEFAULT_INGRESS_LISTEN.parse().expect("constant address"),
            domain: DEFAULT_DOMAIN.to_owned(),
            log: "info".to_owned(),
            log_format: LogFormat::Text,
            max_body_bytes: 1024 * 1024,
            shutdown_grace_period: Duration::from_secs(30),
            termination_grace_period: Duration::from_secs(10),
            registry_auth_file: None,
            insecure_registries: Vec::new(),
            registry_mirrors: BTreeMap::new(),
            runtime: "runc".to_owned(),
            pids_limit: 1024,
            scale_to_zero_grace_period: Duration::from_secs(30),
            enable_scale_to_zero: true,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            activator_queue_depth: 1000,
            activator_queue_timeout: Duration::from_secs(60),
            router_threads: 0,
            ingress_max_connections: 0,
            ingress_header_read_timeout: Duration::from_secs(30),
            ingress_idle_timeout: Duration::from_secs(60),
            api_max_connections: 512,
        }
    }
}

/// One setting: its file key, environment variable and flag.
struct Setting {
    key: &'static str,
    env: &'static str,
    flag: &'static str,
}

const SETTINGS: &[Setting] = &[
    Setting {
        key: "data_dir",
        env: "SKIFF_DATA_DIR",
        flag: "--data-dir",
    },
    Setting {
        key: "api_listen",
        env: "SKIFF_API_LISTEN",
        flag: "--api-listen",
    },
    Setting {
        key: "ingress_listen",
        env: "SKIFF_INGRESS_LISTEN",
        flag: "--ingress-listen",
    },
    Setting {
        key: "domain",
        env: "SKIFF_DOMAIN",
        flag: "--domain",
    },
    Setting {
        key: "log",
        env: "SKIFF_LOG",
        flag: "--log",
    },
    Setting {
        key: "log_format",
        env: "SKIFF_LOG_FORMAT",
        flag: "--log-format",
    },
    Setting {
        key: "max_body_bytes",
        env: "SKIFF_MAX_BODY_BYTES",
        flag: "--max-body-bytes",
    },
    Setting {
        key: "shutdown_grace_period_seconds",
        env: "SKIFF_SHUTDOWN_GRACE_PERIOD_SECONDS",
        flag: "--shutdown-grace-period-seconds",
    },
    Setting {
        key: "termination_grace_period_seconds",
        env: "SKIFF_TERMINATION_GRACE_PERIOD_SECONDS",
        flag: "--termination-grace-period-seconds",
    },
    Setting {
        key: "registry_auth_file",
        env: "SKIFF_REGISTRY_AUTH_FILE",
        flag: "--registry-auth-file",
    },
    Setting {
        key: "insecure_registries",
        env: "SKIFF_INSECURE_REGISTRIES",
        flag: "--insecure-registry",
    },
    Setting {
        key: "registry_mirrors",
        env: "SKIFF_REGISTRY_MIRRORS",
        flag: "--registry-mirror",
    },
    Setting {
        key: "runtime",
        env: "SKIFF_RUNTIME",
        flag: "--runtime",
    },
    Setting {
        key: "pids_limit",
        env: "SKIFF_PIDS_LIMIT",
        flag: "--pids-limit",
    },
    Setting {
        key: "scale_to_zero_grace_period_seconds",
        env: "SKIFF_SCALE_TO_ZERO_GRACE_PERIOD_SECONDS",
        flag: "--scale-to-zero-grace-period-seconds",
    },
    Setting {
        key: "enable_scale_to_zero",
        env: "SKIFF_ENABLE_SCALE_TO_ZERO",
        flag: "--enable-scale-to-zero",
    },
    Setting {
        key: "max_scale_up_rate",
        env: "SKIFF_MAX_SCALE_UP_RATE",
        flag: "--max-scale-up-rate",
    },
    Setting {
        key: "max_scale_down_rate",
        env: "SKIFF_MAX_SCALE_DOWN_RATE",
        flag: "--max-scale-down-rate",
    },
    Setting {
        key: "activator_queue_depth",
        env: "SKIFF_ACTIVATOR_QUEUE_DEPTH",
        flag: "--activator-queue-depth",
    },
    Setting {
        key: "activator_queue_timeout_seconds",
        env: "SKIFF_ACTIVATOR_QUEUE_TIMEOUT_SECONDS",
        flag: "--activator-queue-timeout-seconds",
    },
    Setting {
        key: "router_threads",
        env: "SKIFF_ROUTER_THREADS",
        flag: "--router-threads",
    },
    Setting {
        key: "ingress_max_connections",
        env: "SKIFF_INGRESS_MAX_CONNECTIONS",
        flag: "--ingress-max-connections",
    },
    Setting {
        key: "ingress_header_read_timeout_seconds",
        env: "SKIFF_INGRESS_HEADER_READ_TIMEOUT_SECONDS",
        flag: "--ingress-header-read-timeout-seconds",
    },
    Setting {
        key: "ingress_idle_timeout_seconds",
        env: "SKIFF_INGRESS_IDLE_TIMEOUT_SECONDS",
        flag: "--ingress-idle-timeout-seconds",
    },
    Setting {
        key: "api_max_connections",
        env: "SKIFF_API_MAX_CONNECTIONS",
        flag: "--api-max-connections",
    },
];

/// Environment variables the CLI reads; the daemon ignores them without a warning.
pub const CLIENT_ENV: &[&str] = &[
    "SKIFF_SERVER",
    "SKIFF_TOKEN",
    "SKIFF_CONFIG",
    "SKIFF_NAMESPACE",
];

/// The process environment, behind a trait so tests can pass a map.
pub trait Environment {
    /// Every variable whose name starts with `SKIFF_`.
    fn skiff_vars(&self) -> BTreeMap<String, String>;
}

/// The real process environment.
#[derive(Debug, Default)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn skiff_vars(&self) -> BTreeMap<String, String> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with("SKIFF_"))
            .collect()
    }
}

impl Environment for BTreeMap<String, String> {
    fn skiff_vars(&self) -> BTreeMap<String, String> {
        self.iter()
            .filter(|(k, _)| k.starts_with("SKIFF_"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Settings given as command-line flags (`None`: not given). Keys are file keys.
pub type Flags = BTreeMap<&'static str, String>;

/// Where a value came from, for error messages.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Env(&'static str),
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// The configuration is invalid; every problem found is listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// One line per problem.
    pub problems: Vec<String>,
}

/// What [`load`] found besides the configuration.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// `SKIFF_*` variables that mean nothing to the daemon (likely typos).
    pub unknown_env: Vec<String>,
    /// The file read, if any.
    pub file: Option<PathBuf>,
}

/// A file value in the string form the environment and flags use: lists are
/// comma-separated, and a table of lists (`registry_mirrors`) is `key=a,b;key2=c`.
fn toml_value_to_string(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        toml::Value::Table(t) => t
            .iter()
            .map(|(k, v)| toml_value_to_string(v).map(|v| format!("{k}={v}")))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(";")),
        _ => None,
    }
}

fn check_registry_host(h: &str) -> Result<(), String> {
    let ok = !h.is_empty()
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{h}` is not a registry host such as registry.example.com:5000"
        ))
    }
}

/// Reads the configuration: the file (`config_file`, else `SKIFF_CONFIG`, else
/// [`DEFAULT_CONFIG_FILE`] when it exists), then the environment, then `flags`.
pub fn load(
    config_file: Option<&Path>,
    env: &dyn Environment,
    flags: &Flags,
) -> Result<(Config, LoadReport), ConfigError> {
    let mut problems = Vec::new();
    let mut report = LoadReport::default();
    let mut raw: BTreeMap<&'static str, (String, Source)> = BTreeMap::new();
    let vars = env.skiff_vars();

    let file = match (config_file, vars.get("SKIFF_CONFIG")) {
        (Some(p), _) => Some((p.to_path_buf(), true)),
        (None, Some(p)) => Some((PathBuf::from(p), true)),
        (None, None) => Some((PathBuf::from(DEFAULT_CONFIG_FILE), false)),
    };
    if let Some((path, explicit)) = file {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                report.file = Some(path.clone());
                match text.parse::<toml::Table>() {
                    Ok(table) => {
                        for (k, v) in &table {
                            match SETTINGS.iter().find(|s| s.key == k) {
                                Some(s) => match toml_value_to_string(v) {
                                    Some(v) => {
                                        raw.insert(s.key, (v, Source::File(path.clone())));
                                    }
                                    None => problems.push(format!(
                                        "{k} ({}): must be a string, a number, a list of strings, or (registry_mirrors) a table of lists",
                                        path.display()
                                    )),
                                },
                                None => problems.push(format!(
                                    "{k} ({}): unknown setting; known: {}",
                                    path.display(),
                                    SETTINGS
                                        .iter()
                                        .map(|s| s.key)
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )),
                            }
                        }
                    }
                    Err(e) => problems.push(format!("{}: not valid TOML: {e}", path.display())),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {}
            Err(e) => problems.push(format!("config file {}: {e}", path.display())),
        }
    }
    for (k, v) in &vars {
        match SETTINGS.iter().find(|s| s.env == k) {
            Some(s) => {
                raw.insert(s.key, (v.clone(), Source::Env(s.env)));
            }
            None if CLIENT_ENV.contains(&k.as_str()) => {}
            None => report.unknown_env.push(k.clone()),
        }
    }
    for (k, v) in flags {
        if let Some(s) = SETTINGS.iter().find(|s| s.key == *k) {
            raw.insert(s.key, (v.clone(), Source::Flag(s.flag)));
        }
    }

    let mut config = Config::defaults();
    let get = |key: &str| raw.get(key).cloned().map(|(v, s)| (v.trim().to_owned(), s));
    let mut bad = |key: &str, source: &Source, msg: String| {
        problems.push(format!("{key} (from {source}): {msg}"));
    };
    if let Some((v, s)) = get("data_dir") {
        if v.is_empty() || !v.starts_with('/') {
            bad("data_dir", &s, format!("`{v}` must be an absolute path"));
        } else {
            config.data_dir = PathBuf::from(v);
        }
    }
    for key in ["api_listen", "ingress_listen"] {
        if let Some((v, s)) = get(key) {
            match v.parse::<SocketAddr>() {
                Ok(addr) if key == "api_listen" => config.api_listen = addr,
                Ok(addr) => config.ingress_listen = addr,
                Err(_) => bad(
                    key,
                    &s,
                    format!("`{v}` is not an address such as 127.0.0.1:7070"),
                ),
            }
        }
    }
    if let Some((v, s)) = get("domain") {
        let v = v.trim_end_matches('.').to_ascii_lowercase();
        match skiff_api::names::check_dns1123_subdomain(&v) {
            Ok(()) => config.domain = v,
            Err(e) => bad("domain", &s, e),
        }
    }
    if let Some((v, s)) = get("log") {
        match skiff_telemetry::parse_filter(&v) {
            Ok(_) => config.log = v,
            Err(e) => bad("log", &s, skiff_telemetry::ErrorChain(&e).to_string()),
        }
    }
    if let Some((v, s)) = get("log_format") {
        match v.parse::<LogFormat>() {
            Ok(f) => config.log_format = f,
            Err(e) => bad("log_format", &s, e),
        }
    }
    if let Some((v, s)) = get("max_body_bytes") {
        match v.parse::<usize>() {
            Ok(n) if (1024..=64 * 1024 * 1024).contains(&n) => config.max_body_bytes = n,
            _ => bad(
                "max_body_bytes",
                &s,
                format!("`{v}` must be a number of bytes from 1024 to 67108864"),
            ),
        }
    }
    if let Some((v, s)) = get("shutdown_grace_period_seconds") {
        match v.parse::<u64>() {
            Ok(n) if n <= 3600 => config.shutdown_grace_period = Duration::from_secs(n),
            _ => bad(
                "shutdown_grace_period_seconds",
                &s,
                format!("`{v}` must be a number of seconds from 0 to 3600"),
            ),
        }
    }
    if let Some((v, s)) = get("registry_auth_file") {
        let path = PathBuf::from(&v);
        match skiff_image::auth::CredentialStore::from_file(&path) {
            Ok(_) => config.registry_auth_file = Some(path),
            Err(e) => bad(
                "registry_auth_file",
                &s,
                skiff_telemetry::ErrorChain(&e).to_string(),
            ),
        }
    }
    if let Some((v, s)) = get("insecure_registries") {
        for h in v.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            match check_registry_host(h) {
                Ok(()) => config.insecure_registries.push(h.to_owned()),
                Err(e) => bad("insecure_registries", &s, e),
            }
        }
    }
    if let Some((v, s)) = get("registry_mirrors") {
        for part in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((registry, mirrors)) = part.split_once('=') else {
                bad(
                    "registry_mirrors",
                    &s,
                    format!("`{part}` must be REGISTRY=MIRROR[,MIRROR]"),
                );
                continue;
            };
            let registry = registry.trim().trim_matches('"').to_owned();
            let mut list = Vec::new();
            for m in mirrors.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                let host = m
                    .trim_start_matches("http://")
                    .trim_start_matches("https://");
                match check_registry_host(host).and(check_registry_host(&registry)) {
                    Ok(()) => list.push(m.to_owned()),
                    Err(e) => bad("registry_mirrors", &s, e),
                }
            }
            config.registry_mirrors.insert(registry, list);
        }
    }
    if let Some((v, s)) = get("runtime") {
        match v.as_str() {
            "runc" | "crun" => config.runtime = v,
            p if p.starts_with('/') => config.runtime = v,
            other => bad(
                "runtime",
                &s,
                format!("`{other}` must be runc, crun or an absolute path to one of them"),
            ),
        }
    }
    if let Some((v, s)) = get("pids_limit") {
        match v.parse::<i64>() {
            Ok(n) if (16..=1_000_000).contains(&n) => config.pids_limit = n,
            _ => bad(
                "pids_limit",
                &s,
                format!("`{v}` must be a number from 16 to 1000000"),
            ),
        }
    }
    if let Some((v, s)) = get("scale_to_zero_grace_period_seconds") {
        match v.parse::<u64>() {
            Ok(n) if (1..=3600).contains(&n) => {
                config.scale_to_zero_grace_period = Duration::from_secs(n)
            }
            _ => bad(
                "scale_to_zero_grace_period_seconds",
                &s,
                format!("`{v}` must be a number of seconds from 1 to 3600"),
            ),
        }
    }
    if let Some((v, s)) = get("enable_scale_to_zero") {
        match v.as_str() {
            "true" => config.enable_scale_to_zero = true,
            "false" => config.enable_scale_to_zero = false,
            _ => bad(
                "enable_scale_to_zero",
                &s,
                format!("`{v}` must be true or false"),
            ),
        }
    }
    for (key, field) in [
        ("max_scale_up_rate", &mut config.max_scale_up_rate),
        ("max_scale_down_rate", &mut config.max_scale_down_rate),
    ] {
        if let Some((v, s)) = get(key) {
            // Knative requires both rates to be above 1 (a rate of 1 would never scale).
            match v.parse::<f64>() {
                Ok(n) if n > 1.0 && n <= 1_000_000.0 => *field = n,
                _ => bad(
                    key,
                    &s,
                    format!("`{v}` must be a number above 1 (at most 1000000)"),
                ),
            }
        }
    }
    if let Some((v, s)) = get("router_threads") {
        match v.parse::<usize>() {
            Ok(n) if n <= 1024 => config.router_threads = n,
            _ => bad(
                "router_threads",
                &s,
                format!("`{v}` must be a number of threads from 0 (one per core) to 1024"),
            ),
        }
    }
    if let Some((v, s)) = get("activator_queue_depth") {
        match v.parse::<usize>() {
            Ok(n) if (1..=1_000_000).contains(&n) => config.activator_queue_depth = n,
            _ => bad(
                "activator_queue_depth",
                &s,
                format!("`{v}` must be a number of requests from 1 to 1000000"),
            ),
        }
    }
    for (key, field) in [
        (
            "termination_grace_period_seconds",
            &mut config.termination_grace_period,
        ),
        (
            "activator_queue_timeout_seconds",
            &mut config.activator_queue_timeout,
        ),
        (
            "ingress_header_read_timeout_seconds",
            &mut config.ingress_header_read_timeout,
        ),
        (
            "ingress_idle_timeout_seconds",
            &mut config.ingress_idle_timeout,
        ),
    ] {
        if let Some((v, s)) = get(key) {
            match v.parse::<u64>() {
                Ok(n) if (1..=3600).contains(&n) => *field = Duration::from_secs(n),
                _ => bad(
                    key,
                    &s,
                    format!("`{v}` must be a number of seconds from 1 to 3600"),
                ),
            }
        }
    }
    // 0 leaves the ingress's cap to a share of the open-file limit; the API has no such
    // default.
    for (key, field, zero_is_share) in [
        (
            "ingress_max_connections",
            &mut config.ingress_max_connections,
            true,
        ),
        (
            "api_max_connections",
            &mut config.api_max_connections,
            false,
        ),
    ] {
        if let Some((v, s)) = get(key) {
            match v.parse::<usize>() {
                Ok(n) if (16..=1_000_000).contains(&n) || (zero_is_share && n == 0) => *field = n,
                _ => bad(
                    key,
                    &s,
                    format!(
                        "`{v}` must be a number of connections from 16 to 1000000{}",
                        if zero_is_share {
                            " (or 0: a share of the open-file limit)"
                        } else {
                            ""
                        }
                    ),
                ),
            }
        }
    }
    if config.api_listen == config.ingress_listen && config.api_listen.port() != 0 {
        problems.push(format!(
            "api_listen and ingress_listen are both {}; they must differ",
            config.api_listen
        ));
    }
    if problems.is_empty() {
        Ok((config, report))
    } else {
        Err(ConfigError { problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn no_file() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    /// With nothing given, the defaults are the documented ones.
    #[test]
    fn defaults() {
        let dir = no_file();
        let missing = dir.path().join("none.toml");
        let vars = env(&[("SKIFF_CONFIG", missing.to_str().expect("utf8"))]);
        let err = load(None, &vars, &Flags::new()).expect_err("explicit missing file");
        assert!(err.to_string().contains("none.toml"));
        let (config, report) = load(None, &env(&[]), &Flags::new()).expect("defaults");
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/skiff"));
        assert_eq!(config.api_listen.to_string(), "127.0.0.1:7070");
        assert_eq!(config.ingress_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.domain, "localhost");
        assert!(report.unknown_env.is_empty());
    }

    /// File < environment < flags, per setting.
    #[test]
    fn precedence() {
        let dir = no_file();
        let file = dir.path().join("skiff.toml");
        std::fs::write(
            &file,
            "data_dir = \"/srv/skiff\"\napi_listen = \"127.0.0.1:9000\"\ndomain = \"example.com\"\nmax_body_bytes = 2048\n",
        )
        .expect("write");
        let vars = env(&[
            ("SKIFF_API_LISTEN", "127.0.0.1:9001"),
            ("SKIFF_DOMAIN", "env.example"),
        ]);
        let mut flags = Flags::new();
        flags.insert("domain", "flag.example".into());
        let (config, _) = load(Some(&file), &vars, &flags).expect("valid");
        assert_eq!(config.data_dir, PathBuf::from("/srv/skiff"));
        assert_eq!(config.api_listen.to_string(), "127.0.0.1:9001");
        assert_eq!(config.domain, "flag.example");
        assert_eq!(config.max_body_bytes, 2048);
    }

    /// Every problem is reported at once, each with its source.
    #[test]
    fn every_problem_at_once() {
        let dir = no_file();
        let file = dir.path().join("skiff.toml");
        std::fs::write(
            &file,
            "data_dir = \"relative\"\nunknown_key = 1\nlog_format = \"xml\"\n",
        )
        .expect("write");
        let vars = env(&[("SKIFF_API_LISTEN", "nowhere"), ("SKIFF_DOMIAN", "x")]);
        let mut flags = Flags::new();
        flags.insert("max_body_bytes", "12".into());
        let err = load(Some(&file), &vars, &flags).expect_err("invalid");
        let text = err.to_string();
        assert_eq!(err.problems.len(), 5, "{text}");
        assert!(text.contains("data_dir (from"), "{text}");
        assert!(text.contains("unknown_key"), "{text}");
        assert!(text.contains("log_format"), "{text}");
        assert!(
            text.contains("api_listen (from environment variable SKIFF_API_LISTEN)"),
            "{text}"
        );
        assert!(
            text.contains("max_body_bytes (from flag --max-body-bytes)"),
            "{text}"
        );
    }

    /// The router's thread count: 0 (one per core) by default, bounded.
    #[test]
    fn router_threads() {
        let (config, _) = load(None, &env(&[]), &Flags::new()).expect("valid");
        assert_eq!(config.router_threads, 0);
        let (config, _) =
            load(None, &env(&[("SKIFF_ROUTER_THREADS", "2")]), &Flags::new()).expect("valid");
        assert_eq!(config.router_threads, 2);
        let mut flags = Flags::new();
        flags.insert("router_threads", "many".into());
        let err = load(None, &env(&[]), &flags).expect_err("invalid");
        assert!(
            err.to_string()
                .contains("router_threads (from flag --router-threads)"),
            "{err}"
        );
    }

    /// The connection bounds: defaults, each source, and ranges (0 is a share of the
    /// open-file limit for the ingress only).
    #[test]
    fn connection_settings() {
        let (config, _) = load(None, &env(&[]), &Flags::new()).expect("valid");
        assert_eq!(
            (
                config.ingress_max_connections,
                config.ingress_header_read_timeout,
                config.ingress_idle_timeout,
                config.api_max_connections
            ),
            (0, Duration::from_secs(30), Duration::from_secs(60), 512)
        );
        let mut flags = Flags::new();
        flags.insert("ingress_header_read_timeout_seconds", "5".into());
        let vars = env(&[
            ("SKIFF_INGRESS_MAX_CONNECTIONS", "500"),
            ("SKIFF_INGRESS_IDLE_TIMEOUT_SECONDS", "10"),
            ("SKIFF_API_MAX_CONNECTIONS", "64"),
        ]);
        let (config, _) = load(None, &vars, &flags).expect("valid");
        assert_eq!(
            (
                config.ingress_max_connections,
                config.ingress_header_read_timeout,
                config.ingress_idle_timeout,
                config.api_max_connections
            ),
            (500, Duration::from_secs(5), Duration::from_secs(10), 64)
        );
        let vars = env(&[
            ("SKIFF_INGRESS_MAX_CONNECTIONS", "3"),
            ("SKIFF_API_MAX_CONNECTIONS", "0"),
            ("SKIFF_INGRESS_IDLE_TIMEOUT_SECONDS", "0"),
        ]);
        let mut flags = Flags::new();
        flags.insert("ingress_header_read_timeout_seconds", "soon".into());
        let err = load(None, &vars, &flags).expect_err("invalid");
        let text = err.to_string();
        assert_eq!(err.problems.len(), 4, "{text}");
        for key in [
            "ingress_max_connections",
            "api_max_connections",
            "ingress_idle_timeout_seconds",
            "ingress_header_read_timeout_seconds (from flag",
        ] {
            assert!(text.contains(key), "{key}: {text}");
        }
    }

    /// The cluster-wide autoscaling settings: Knative's defaults, a TOML boolean and numbers,
    /// and bounds (rates above 1, as Knative requires).
    #[test]
    fn autoscaling_settings() {
        let (config, _) = load(None, &env(&[]), &Flags::new()).expect("valid");
        assert!(config.enable_scale_to_zero);
        assert_eq!(
            (config.max_scale_up_rate, config.max_scale_down_rate),
            (1000.0, 2.0)
        );
        let dir = no_file();
        let file = dir.path().join("skiff.toml");
        std::fs::write(
            &file,
            "enable_scale_to_zero = false
max_scale_up_rate = 10
max_scale_down_rate = 1.5
",
        )
        .expect("write");
        let (config, _) = load(Some(&file), &env(&[]), &Flags::new()).expect("valid");
        assert!(!config.enable_scale_to_zero);
        assert_eq!(
            (config.max_scale_up_rate, config.max_scale_down_rate),
            (10.0, 1.5)
        );
        let vars = env(&[
            ("SKIFF_ENABLE_SCALE_TO_ZERO", "no"),
            ("SKIFF_MAX_SCALE_UP_RATE", "1"),
        ]);
        let mut flags = Flags::new();
        flags.insert("max_scale_down_rate", "NaN".into());
        let err = load(None, &vars, &flags).expect_err("invalid");
        let text = err.to_string();
        assert_eq!(err.problems.len(), 3, "{text}");
        assert!(
            text.contains("enable_scale_to_zero (from environment variable SKIFF_ENABLE_SCALE_TO_ZERO): `no` must be true or false"),
            "{text}"
        );
        assert!(text.contains("max_scale_up_rate (from environment variable SKIFF_MAX_SCALE_UP_RATE): `1` must be a number above 1"), "{text}");
        assert!(
            text.contains("max_scale_down_rate (from flag --max-scale-down-rate)"),
            "{text}"
        );
    }

    /// The termination grace: 10 s by default (Cloud Run's), from the environment or a
    /// flag, and 1 to 3600 s like the other seconds settings.
    #[test]
    fn termination_grace_setting() {
        let (config, _) = load(None, &env(&[]), &Flags::new()).expect("valid");
        assert_eq!(config.termination_grace_period, Duration::from_secs(10));
        let vars = env(&[("SKIFF_TERMINATION_GRACE_PERIOD_SECONDS", "2")]);
        let (config, _) = load(None, &vars, &Flags::new()).expect("valid");
        assert_eq!(config.termination_grace_period, Duration::from_secs(2));
        let mut flags = Flags::new();
        flags.insert("termination_grace_period_seconds", "45".into());
        let (config, _) = load(None, &vars, &flags).expect("valid");
        assert_eq!(config.termination_grace_period, Duration::from_secs(45));
        for bad in ["0", "3601", "soon"] {
            let mut flags = Flags::new();
            flags.insert("termination_grace_period_seconds", bad.into());
            let err = load(None, &env(&[]), &flags).expect_err("invalid");
            assert!(
                err.to_string().contains(&format!(
                    "termination_grace_period_seconds (from flag --termination-grace-period-seconds): `{bad}` must be a number of seconds from 1 to 3600"
                )),
                "{err}"
            );
        }
    }

    /// Unknown SKIFF_ variables are reported (likely typos) but CLI ones are not.
    #[test]
    fn unknown_env_is_reported() {
        let vars = env(&[
            ("SKIFF_DOMIAN", "x"),
            ("SKIFF_TOKEN", "t"),
            ("SKIFF_SERVER", "s"),
        ]);
        let (_, report) = load(None, &vars, &Flags::new()).expect("valid");
        assert_eq!(report.unknown_env, vec!["SKIFF_DOMIAN".to_owned()]);
    }

    /// The example configuration in the repository parses and is valid.
    #[test]
    fn example_config_is_valid() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/skiff.toml");
        let (config, report) =
            load(Some(&example), &env(&[]), &Flags::new()).expect("valid example");
        assert_eq!(report.file.as_deref(), Some(example.as_path()));
        assert_eq!(config.domain, "localhost");
    }

    /// Registry settings come as TOML lists and tables, or as strings from env and flags.
    #[test]
    fn registry_settings() {
        let dir = no_file();
        let file = dir.path().join("skiff.toml");
        std::fs::write(
            &file,
            "insecure_registries = [\"registry.lan:5000\"]\n[registry_mirrors]\n\"docker.io\" = [\"127.0.0.1:5001\", \"https://mirror.example\"]\n",
        )
        .expect("write");
        let (config, _) = load(Some(&file), &env(&[]), &Flags::new()).expect("valid");
        assert_eq!(
            config.insecure_registries,
            vec!["registry.lan:5000".to_owned()]
        );
        assert_eq!(
            config.registry_mirrors.get("docker.io"),
            Some(&vec![
                "127.0.0.1:5001".to_owned(),
                "https://mirror.example".to_owned()
            ])
        );
        let vars = env(&[
            ("SKIFF_REGISTRY_MIRRORS", "quay.io=m1:5000;ghcr.io=m2"),
            ("SKIFF_INSECURE_REGISTRIES", "a:1, b:2"),
        ]);
        let (config, _) = load(Some(&file), &vars, &Flags::new()).expect("valid");
        assert_eq!(config.registry_mirrors.len(), 2);
        assert_eq!(
            config.insecure_registries,
            vec!["a:1".to_owned(), "b:2".to_owned()]
        );
        let vars = env(&[
            ("SKIFF_REGISTRY_MIRRORS", "nonsense"),
            ("SKIFF_REGISTRY_AUTH_FILE", "/nonexistent/auth.json"),
        ]);
        let err = load(Some(&file), &vars, &Flags::new()).expect_err("invalid");
        assert_eq!(err.problems.len(), 2, "{err}");
    }
}
