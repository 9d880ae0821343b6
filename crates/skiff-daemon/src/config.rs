//! The daemon's configuration: one [`Config`] read from a TOML file, then overridden by
//! `SKIFF_*` environment variables, then by command-line flags, and validated as a whole
//! before anything starts, with every problem reported at once and attributed to its source.
//!
//! Like linkerd's composed `Config { inbound, outbound, admin, … }`, [`Config`] is one
//! section per component ([`DaemonConfig`], [`LogConfig`], [`ApiConfig`],
//! [`IngressConfig`], [`ActivatorConfig`], [`AutoscalingConfig`], [`RuntimeConfig`] and the
//! image puller's [`ImageSettings`]). Each section owns its defaults ([`Default`]) and its
//! settings: one [`setting!`] entry per setting gives its flat file key, its environment
//! variable, its flag and the parser that checks a value and sets the field, and the file,
//! the environment and the flags are all read through those entries. Adding a setting is a
//! field, its default, one entry — and its `skiff server` flag.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use skiff_control::images::ImageSettings;
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

/// The share of the open-file limit the ingress's connections may use by default (each may
/// also hold a connection into an instance).
pub const INGRESS_FD_SHARE_PERCENT: u64 = 40;

/// The validated configuration of a daemon, one section per component.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Where state lives and what the daemon is called on the network.
    pub daemon: DaemonConfig,
    /// Logging.
    pub log: LogConfig,
    /// The REST API's server.
    pub api: ApiConfig,
    /// The HTTP ingress (the router) that serves services.
    pub ingress: IngressConfig,
    /// The activator: where requests wait for instances.
    pub activator: ActivatorConfig,
    /// The cluster-wide autoscaling settings (Knative's `config-autoscaler`).
    pub autoscaling: AutoscalingConfig,
    /// The OCI runtime instances run under.
    pub runtime: RuntimeConfig,
    /// The registry settings the image puller uses.
    pub images: ImageSettings,
    /// What instances reach outside their namespace, and how names resolve.
    pub network: NetworkConfig,
    /// The prices cost is computed at.
    pub cost: CostConfig,
    /// Where alerts are sent.
    pub alerts: AlertsConfig,
    /// Request logs and traces.
    pub requests: RequestsConfig,
    /// The rollout policy of revisions that set none.
    pub rollout: RolloutConfig,
}

impl Config {
    /// The registry settings the image puller uses.
    pub fn image_settings(&self) -> ImageSettings {
        self.images.clone()
    }

    /// The defaults, as `skiff server` runs with no file, environment or flags.
    pub fn defaults() -> Self {
        Self::default()
    }

    /// Every setting's key, environment variable and flag, section by section.
    fn specs() -> Vec<&'static Spec> {
        let mut specs = Vec::new();
        specs.extend(DaemonConfig::SETTINGS.iter().map(|s| &s.spec));
        specs.extend(LogConfig::SETTINGS.iter().map(|s| &s.spec));
        specs.extend(ApiConfig::SETTINGS.iter().map(|s| &s.spec));
        specs.extend(IngressConfig::SETTINGS.iter().map(|s| &s.spec));
        specs.extend(ActivatorConfig::SETTINGS.iter().map(|s| &s.spec));
        specs.extend(AutoscalingConfig::SETTINGS.iter().map(|s| &s.spec));
        specs.extend(RuntimeConfig::SETTINGS.iter().map(|s| &s.spec));
        specs.extend(ImageSettings::SETTINGS.iter().map(|s| &s.spec));
        specs.extend(NetworkConfig::SETTINGS.iter().map(|s| &s.spec));
        specs.extend(CostConfig::SETTINGS.iter().map(|s| &s.spec));
        specs.extend(AlertsConfig::SETTINGS.iter().map(|s| &s.spec));
        specs.extend(RequestsConfig::SETTINGS.iter().map(|s| &s.spec));
        specs.extend(RolloutConfig::SETTINGS.iter().map(|s| &s.spec));
        specs
    }

    /// Each section read from `raw` and validated, then the checks across sections.
    fn from_raw(raw: &Raw, problems: &mut Vec<String>) -> Self {
        let config = Config {
            daemon: DaemonConfig::load(raw, problems),
            log: LogConfig::load(raw, problems),
            api: ApiConfig::load(raw, problems),
            ingress: IngressConfig::load(raw, problems),
            activator: ActivatorConfig::load(raw, problems),
            autoscaling: AutoscalingConfig::load(raw, problems),
            runtime: RuntimeConfig::load(raw, problems),
            images: ImageSettings::load(raw, problems),
            network: NetworkConfig::load(raw, problems),
            cost: CostConfig::load(raw, problems),
            alerts: AlertsConfig::load(raw, problems),
            requests: RequestsConfig::load(raw, problems),
            rollout: RolloutConfig::load(raw, problems),
        };
        if config.api.listen == config.ingress.listen && config.api.listen.port() != 0 {
            problems.push(format!(
                "api_listen and ingress_listen are both {}; they must differ",
                config.api.listen
            ));
        }
        config
    }
}

/// Where a setting is read from: its flat file key, environment variable and flag (with
/// the flag's help).
#[derive(Debug)]
pub struct Spec {
    /// The key in the TOML file, and the key of [`Flags`].
    pub key: &'static str,
    /// The `SKIFF_*` environment variable.
    pub env: &'static str,
    /// The `skiff server` flag, `--` included.
    pub flag: &'static str,
    /// The flag's one-line help.
    pub help: &'static str,
}

/// Every setting, section by section: `skiff server` offers a flag for each.
pub fn settings() -> Vec<&'static Spec> {
    Config::specs()
}

/// What is wrong with one value (a list may have several problems).
#[derive(Debug)]
struct Problems(Vec<String>);

impl From<String> for Problems {
    fn from(problem: String) -> Self {
        Problems(vec![problem])
    }
}

/// One setting of section `S`: where it is read from, and how its text (trimmed) is
/// checked and set on the section.
struct Setting<S> {
    spec: Spec,
    apply: fn(&mut S, &str) -> Result<(), Problems>,
}

/// A [`Setting`]: `setting!(KEY, ENV, FLAG, field = parser, HELP)`, where the parser turns
/// the value's text into the field's type or says what is wrong with it, and `HELP` is the
/// flag's help in `skiff server --help`.
macro_rules! setting {
    ($key:literal, $env:literal, $flag:literal, $field:ident = $parse:expr, $help:literal $(,)?) => {
        Setting {
            spec: Spec {
                key: $key,
                env: $env,
                flag: $flag,
                help: $help,
            },
            apply: |section, text| {
                section.$field = ($parse)(text)?;
                Ok(())
            },
        }
    };
}

/// The values given, by file key, with where each came from (the last source wins).
type Raw = BTreeMap<&'static str, (String, Source)>;

/// A section of [`Config`]: its defaults and its settings.
trait Section: Default + 'static {
    /// The section's settings, one entry each.
    const SETTINGS: &'static [Setting<Self>];

    /// The problems between the section's own fields, once each value is valid.
    fn validate(&self) -> Vec<String> {
        Vec::new()
    }

    /// The defaults overridden by each value given, with every problem (and its source)
    /// added to `problems`.
    fn load(raw: &Raw, problems: &mut Vec<String>) -> Self {
        let mut section = Self::default();
        for setting in Self::SETTINGS {
            let Some((text, source)) = raw.get(setting.spec.key) else {
                continue;
            };
            if let Err(Problems(found)) = (setting.apply)(&mut section, text.trim()) {
                let key = setting.spec.key;
                problems.extend(
                    found
                        .into_iter()
                        .map(|p| format!("{key} (from {source}): {p}")),
                );
            }
        }
        problems.extend(section.validate());
        section
    }
}

/// The daemon itself: where its state lives and its service URLs' domain.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Where the state store, the API token, images and logs live.
    pub data_dir: PathBuf,
    /// Domain of service URLs: `http://<service>.<namespace>.<domain>`.
    pub domain: String,
    /// How long shutdown waits for in-flight API requests.
    pub shutdown_grace_period: Duration,
    /// The key Secrets are encrypted with (32 random bytes, created when missing);
    /// `<data_dir>/secret.key` when unset.
    pub secret_key_file: Option<PathBuf>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            domain: DEFAULT_DOMAIN.to_owned(),
            shutdown_grace_period: Duration::from_secs(30),
            secret_key_file: None,
        }
    }
}

impl Section for DaemonConfig {
    const SETTINGS: &'static [Setting<Self>] = &[
        setting!(
            "data_dir",
            "SKIFF_DATA_DIR",
            "--data-dir",
            data_dir = parse::absolute_path,
            "Data directory [default: /var/lib/skiff]",
        ),
        setting!(
            "domain",
            "SKIFF_DOMAIN",
            "--domain",
            domain = parse::domain,
            "Domain of service URLs [default: localhost]",
        ),
        setting!(
            "shutdown_grace_period_seconds",
            "SKIFF_SHUTDOWN_GRACE_PERIOD_SECONDS",
            "--shutdown-grace-period-seconds",
            shutdown_grace_period = |v| parse::seconds(v, 0),
            "Seconds shutdown waits for in-flight requests [default: 30]",
        ),
        setting!(
            "secret_key_file",
            "SKIFF_SECRET_KEY_FILE",
            "--secret-key-file",
            secret_key_file = |v| parse::absolute_path(v).map(Some),
            "The key Secrets are encrypted with, 32 random bytes (created when missing) [default: DATA_DIR/secret.key]",
        ),
    ];
}

/// Logging.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Log filter, in `tracing-subscriber`'s `EnvFilter` syntax.
    pub filter: String,
    /// Log line format.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

impl Section for LogConfig {
    const SETTINGS: &'static [Setting<Self>] = &[
        setting!(
            "log",
            "SKIFF_LOG",
            "--log",
            filter = parse::log_filter,
            "Log filter, e.g. `info` or `info,skiff_store=debug` [default: info]",
        ),
        setting!(
            "log_format",
            "SKIFF_LOG_FORMAT",
            "--log-format",
            format = str::parse::<LogFormat>,
            "Log format: `text` or `json` [default: text]",
        ),
    ];
}

/// The REST API's server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Address of the REST API.
    pub listen: SocketAddr,
    /// Largest API request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most client connections the API keeps open.
    pub max_connections: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: DEFAULT_API_LISTEN.parse().expect("constant address"),
            max_body_bytes: 1024 * 1024,
            max_connections: 512,
        }
    }
}

impl Section for ApiConfig {
    const SETTINGS: &'static [Setting<Self>] = &[
        setting!(
            "api_listen",
            "SKIFF_API_LISTEN",
            "--api-listen",
            listen = parse::address,
            "API address [default: 127.0.0.1:7070]",
        ),
        setting!(
            "max_body_bytes",
            "SKIFF_MAX_BODY_BYTES",
            "--max-body-bytes",
            max_body_bytes = |v| parse::within(
                v,
                1024..=64 * 1024 * 1024,
                "a number of bytes from 1024 to 67108864"
            ),
            "Largest API request body in bytes [default: 1048576]",
        ),
        setting!(
            "api_max_connections",
            "SKIFF_API_MAX_CONNECTIONS",
            "--api-max-connections",
            max_connections = |v| parse::connections(v, false),
            "Most client connections the API keeps open [default: 512]",
        ),
    ];
}

/// The HTTP ingress (the router) that serves services, and its connections.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// Address of the HTTP ingress that routes to services.
    pub listen: SocketAddr,
    /// Most client connections the ingress keeps open; 0 means a share of the open-file
    /// limit ([`INGRESS_FD_SHARE_PERCENT`]).
    pub max_connections: usize,
    /// Longest a new ingress connection may take to send a complete request head (from
    /// accept), and a started head to finish.
    pub header_read_timeout: Duration,
    /// Longest an ingress connection may stay open without a request in flight.
    pub idle_timeout: Duration,
    /// Threads the router serves on; 0 means one per core.
    pub router_threads: usize,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            listen: DEFAULT_INGRESS_LISTEN.parse().expect("constant address"),
            max_connections: 0,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            router_threads: 0,
        }
    }
}

impl Section for IngressConfig {
    const SETTINGS: &'static [Setting<Self>] = &[
        setting!(
            "ingress_listen",
            "SKIFF_INGRESS_LISTEN",
            "--ingress-listen",
            listen = parse::address,
            "HTTP ingress address [default: 127.0.0.1:8080]",
        ),
        setting!(
            "ingress_max_connections",
            "SKIFF_INGRESS_MAX_CONNECTIONS",
            "--ingress-max-connections",
            max_connections = |v| parse::connections(v, true),
            "Most client connections the ingress keeps open, 0 for 40% of the open-file limit [default: 0]",
        ),
        setting!(
            "ingress_header_read_timeout_seconds",
            "SKIFF_INGRESS_HEADER_READ_TIMEOUT_SECONDS",
            "--ingress-header-read-timeout-seconds",
            header_read_timeout = |v| parse::seconds(v, 1),
            "Seconds a new ingress connection has to send a complete request head [default: 30]",
        ),
        setting!(
            "ingress_idle_timeout_seconds",
            "SKIFF_INGRESS_IDLE_TIMEOUT_SECONDS",
            "--ingress-idle-timeout-seconds",
            idle_timeout = |v| parse::seconds(v, 1),
            "Seconds an ingress connection may stay open with no request in flight [default: 60]",
        ),
        setting!(
            "router_threads",
            "SKIFF_ROUTER_THREADS",
            "--router-threads",
            router_threads = |v| parse::within(
                v,
                0..=1024,
                "a number of threads from 0 (one per core) to 1024"
            ),
            "Threads the router serves on, 0 for one per core [default: 0]",
        ),
    ];
}

/// The activator: where requests wait for a revision's instances.
#[derive(Debug, Clone)]
pub struct ActivatorConfig {
    /// Most requests that may wait for instances of one revision.
    pub queue_depth: usize,
    /// Longest a request waits for an instance with room.
    pub queue_timeout: Duration,
}

impl Default for ActivatorConfig {
    fn default() -> Self {
        ActivatorConfig {
            queue_depth: 1000,
            queue_timeout: Duration::from_secs(60),
        }
    }
}

impl Section for ActivatorConfig {
    const SETTINGS: &'static [Setting<Self>] = &[
        setting!(
            "activator_queue_depth",
            "SKIFF_ACTIVATOR_QUEUE_DEPTH",
            "--activator-queue-depth",
            queue_depth =
                |v| parse::within(v, 1..=1_000_000, "a number of requests from 1 to 1000000"),
            "Most requests waiting for instances of one revision [default: 1000]",
        ),
        setting!(
            "activator_queue_timeout_seconds",
            "SKIFF_ACTIVATOR_QUEUE_TIMEOUT_SECONDS",
            "--activator-queue-timeout-seconds",
            queue_timeout = |v| parse::seconds(v, 1),
            "Seconds a request waits for an instance before a 503 [default: 60]",
        ),
    ];
}

/// The cluster-wide autoscaling settings (Knative's `config-autoscaler`).
#[derive(Debug, Clone)]
pub struct AutoscalingConfig {
    /// How long an idle revision keeps its last instance before going to zero (Knative's
    /// `scale-to-zero-grace-period`).
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
}

impl Default for AutoscalingConfig {
    fn default() -> Self {
        AutoscalingConfig {
            scale_to_zero_grace_period: Duration::from_secs(30),
            enable_scale_to_zero: true,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
        }
    }
}

impl Section for AutoscalingConfig {
    const SETTINGS: &'static [Setting<Self>] = &[
        setting!(
            "scale_to_zero_grace_period_seconds",
            "SKIFF_SCALE_TO_ZERO_GRACE_PERIOD_SECONDS",
            "--scale-to-zero-grace-period-seconds",
            scale_to_zero_grace_period = |v| parse::seconds(v, 1),
            "Seconds an idle revision keeps its last instance before scaling to zero [default: 30]",
        ),
        setting!(
            "enable_scale_to_zero",
            "SKIFF_ENABLE_SCALE_TO_ZERO",
            "--enable-scale-to-zero",
            enable_scale_to_zero = parse::boolean,
            "Whether idle revisions may scale to zero: true or false [default: true]",
        ),
        setting!(
            "max_scale_up_rate",
            "SKIFF_MAX_SCALE_UP_RATE",
            "--max-scale-up-rate",
            max_scale_up_rate = parse::rate,
            "Most growth per autoscaler decision, as a factor of ready instances [default: 1000]",
        ),
        setting!(
            "max_scale_down_rate",
            "SKIFF_MAX_SCALE_DOWN_RATE",
            "--max-scale-down-rate",
            max_scale_down_rate = parse::rate,
            "Most shrinking per decision, as a divisor of ready instances [default: 2]",
        ),
    ];
}

/// The OCI runtime instances run under.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The OCI runtime binary: `runc`, `crun` or an absolute path to one of them.
    pub binary: String,
    /// The pids limit of every container.
    pub pids_limit: i64,
    /// How long a stopped instance's containers have between SIGTERM and SIGKILL (Cloud
    /// Run's 10 s); its requests in flight are drained before, up to `timeoutSeconds`.
    pub termination_grace_period: Duration,
    /// At most this many parked sandboxes in all (`None`: sized from free memory, see
    /// [`RuntimeConfig::parked_sandboxes`]).
    pub parked_sandboxes: Option<usize>,
    /// Frozen instances may hold at most this much memory (`None`: an eighth of the memory
    /// available at start).
    pub frozen_memory_budget: Option<u64>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            binary: "runc".to_owned(),
            pids_limit: 1024,
            termination_grace_period: Duration::from_secs(10),
            parked_sandboxes: None,
            frozen_memory_budget: None,
        }
    }
}

/// What one parked sandbox is budgeted in memory when their number is sized from free
/// memory (its held runtime init, namespaces and mounts; see BENCHMARKS.md).
pub const PARKED_SANDBOX_BUDGET: u64 = 16 << 20;
/// The share of the memory available at start that parked sandboxes may take, when their
/// number is sized from it.
pub const PARKED_MEMORY_SHARE: u64 = 8;
/// The most parked sandboxes sized from free memory.
pub const PARKED_SANDBOXES_MAX: usize = 1000;

/// The memory available now (`MemAvailable`), bytes; 0 when unknown.
fn memory_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

impl RuntimeConfig {
    /// The cap of parked sandboxes: the setting, or an eighth of the memory available now
    /// at [`PARKED_SANDBOX_BUDGET`] each (at most [`PARKED_SANDBOXES_MAX`]).
    pub fn parked_sandboxes(&self) -> usize {
        self.parked_sandboxes.unwrap_or_else(|| {
            let n = memory_available() / PARKED_MEMORY_SHARE / PARKED_SANDBOX_BUDGET;
            usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(PARKED_SANDBOXES_MAX)
        })
    }

    /// The memory frozen instances may hold: the setting, or an eighth of the memory
    /// available now.
    pub fn frozen_memory_budget(&self) -> u64 {
        self.frozen_memory_budget
            .unwrap_or_else(|| memory_available() / PARKED_MEMORY_SHARE)
    }
}

impl Section for RuntimeConfig {
    const SETTINGS: &'static [Setting<Self>] = &[
        setting!(
            "runtime",
            "SKIFF_RUNTIME",
            "--runtime",
            binary = parse::runtime,
            "The OCI runtime: `runc` or `crun` [default: runc]",
        ),
        setting!(
            "pids_limit",
            "SKIFF_PIDS_LIMIT",
            "--pids-limit",
            pids_limit = |v| parse::within(v, 16..=1_000_000, "a number from 16 to 1000000"),
            "The pids limit of every container [default: 1024]",
        ),
        setting!(
            "termination_grace_period_seconds",
            "SKIFF_TERMINATION_GRACE_PERIOD_SECONDS",
            "--termination-grace-period-seconds",
            termination_grace_period = |v| parse::seconds(v, 1),
            "Seconds a stopped instance has between SIGTERM and SIGKILL, after its requests in flight are done [default: 10]",
        ),
        setting!(
            "parked_sandboxes",
            "SKIFF_PARKED_SANDBOXES",
            "--parked-sandboxes",
            parked_sandboxes = |v: &str| match v.trim() {
                "auto" => Ok(None),
                v => parse::within(v, 0..=100_000, "`auto` or a number from 0 to 100000")
                    .map(|n: i64| Some(n as usize)),
            },
            "Sandboxes kept created ahead (one per revision that may take requests), started by a request in a few ms; 0 turns it off [default: auto, an eighth of the memory available at start at 16 MiB each, at most 1000]",
        ),
        setting!(
            "frozen_memory_budget",
            "SKIFF_FROZEN_MEMORY_BUDGET",
            "--frozen-memory-budget",
            frozen_memory_budget = |v: &str| match v.trim() {
                "auto" => Ok(None),
                v => skiff_api::quantity::Quantity::parse(v)
                    .map(|q| Some(q.as_units()))
                    .map_err(|e| e.to_string()),
            },
            "Memory the instances kept frozen at zero (skiff.dev/warm: frozen) may hold in all, like 2Gi [default: auto, an eighth of the memory available at start]",
        ),
    ];
}

/// Instances' resolver and outbound connections.
#[derive(Debug, Clone, Default)]
pub struct NetworkConfig {
    /// The egress policy of a revision without a `skiff.dev/egress` annotation.
    pub egress_default: skiff_api::egress::EgressPolicy,
    /// The DNS server outside names are resolved with; `None`: the host's (its
    /// `/etc/resolv.conf`).
    pub dns_upstream: Option<SocketAddr>,
}

impl Section for NetworkConfig {
    const SETTINGS: &'static [Setting<Self>] = &[
        setting!(
            "egress_default",
            "SKIFF_EGRESS_DEFAULT",
            "--egress-default",
            egress_default = |v: &str| v.parse().map_err(|e: skiff_api::egress::PolicyError| e.0),
            "What instances may reach outside when their revision has no skiff.dev/egress annotation: none, public, all, or HOST[:PORT] and A.B.C.D/N entries, comma-separated [default: public]",
        ),
        setting!(
            "dns_upstream",
            "SKIFF_DNS_UPSTREAM",
            "--dns-upstream",
            dns_upstream = |v| parse::address(v).map(Some),
            "The DNS server (ADDR:PORT) instances' outside names are resolved with [default: the host's, from /etc/resolv.conf]",
        ),
    ];
}

/// The prices cost is computed at (Cloud Run's request-based ones by default).
#[derive(Debug, Clone)]
pub struct CostConfig {
    /// Dollars per vCPU-second.
    pub price_vcpu_second: f64,
    /// Dollars per GiB-second.
    pub price_gib_second: f64,
    /// Dollars per million requests.
    pub price_million_requests: f64,
}

impl Default for CostConfig {
    fn default() -> Self {
        let p = skiff_control::telemetry::Prices::default();
        CostConfig {
            price_vcpu_second: p.vcpu_second,
            price_gib_second: p.gib_second,
            price_million_requests: p.million_requests,
        }
    }
}

impl CostConfig {
    /// The prices.
    pub fn prices(&self) -> skiff_control::telemetry::Prices {
        skiff_control::telemetry::Prices {
            vcpu_second: self.price_vcpu_second,
            gib_second: self.price_gib_second,
            million_requests: self.price_million_requests,
        }
    }
}

impl Section for CostConfig {
    const SETTINGS: &'static [Setting<Self>] = &[
        setting!(
            "price_vcpu_second",
            "SKIFF_PRICE_VCPU_SECOND",
            "--price-vcpu-second",
            price_vcpu_second = parse::price,
            "Dollars per vCPU-second an instance is allotted [default: 0.000024, Cloud Run's]",
        ),
        setting!(
            "price_gib_second",
            "SKIFF_PRICE_GIB_SECOND",
            "--price-gib-second",
            price_gib_second = parse::price,
            "Dollars per GiB-second of memory an instance is allotted [default: 0.0000025, Cloud Run's]",
        ),
        setting!(
            "price_million_requests",
            "SKIFF_PRICE_MILLION_REQUESTS",
            "--price-million-requests",
            price_million_requests = parse::price,
            "Dollars per million requests [default: 0.40, Cloud Run's]",
        ),
    ];
}

/// The daemon-wide rollout policy, for revisions whose template sets no `skiff.dev/rollout`
/// (off by default: a new revision takes its traffic at once, as in Knative).
#[derive(Debug, Clone)]
pub struct RolloutConfig {
    /// The steps, or `None` (off).
    pub steps: Option<Vec<u32>>,
    /// Time at each step.
    pub step: std::time::Duration,
    /// The checks.
    pub analysis: skiff_api::rollout::Analysis,
    /// Canary requests a step needs.
    pub min_requests: u64,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            steps: None,
            step: skiff_api::rollout::DEFAULT_STEP,
            analysis: skiff_api::rollout::Analysis::DEFAULT,
            min_requests: skiff_api::rollout::DEFAULT_MIN_REQUESTS,
        }
    }
}

impl RolloutConfig {
    /// The default policy, when one is set.
    pub fn policy(&self) -> Option<skiff_api::rollout::RolloutPolicy> {
        self.steps
            .as_ref()
            .map(|steps| skiff_api::rollout::RolloutPolicy {
                steps: steps.clone(),
                step_millis: self.step.as_millis() as u64,
                analysis: self.analysis,
                min_requests: self.min_requests,
                source: "default".into(),
            })
    }
}

impl Section for RolloutConfig {
    const SETTINGS: &'static [Setting<Self>] = &[
        setting!(
            "rollout",
            "SKIFF_ROLLOUT",
            "--rollout",
            steps = |v: &str| match v.trim() {
                "off" => Ok(None),
                v => skiff_api::rollout::parse_steps(v).map(Some),
            },
            "Default rollout steps for revisions that set no skiff.dev/rollout, like 5,25,50,100 [default: off]",
        ),
        setting!(
            "rollout_step",
            "SKIFF_ROLLOUT_STEP",
            "--rollout-step",
            step = skiff_api::rollout::parse_step,
            "Time at each step of the default rollout [default: 30s]",
        ),
        setting!(
            "rollout_analysis",
            "SKIFF_ROLLOUT_ANALYSIS",
            "--rollout-analysis",
            analysis = |v: &str| v.parse::<skiff_api::rollout::Analysis>(),
            "Checks of the default rollout: errors, latency, slo (with thresholds like latency:2x), or none [default: errors,latency,slo]",
        ),
        setting!(
            "rollout_min_requests",
            "SKIFF_ROLLOUT_MIN_REQUESTS",
            "--rollout-min-requests",
            min_requests = skiff_api::rollout::parse_min_requests,
            "Canary requests each step of the default rollout needs before it can pass [default: 20]",
        ),
    ];
}

/// Where SLO and budget alerts are sent, besides `GET /api/v1/alerts`.
#[derive(Debug, Clone, Default)]
pub struct AlertsConfig {
    /// Alertmanager's base URL (its v2 API).
    pub alertmanager_url: Option<String>,
    /// A URL that gets Alertmanager's webhook body.
    pub alert_webhook_url: Option<String>,
}

impl Section for AlertsConfig {
    const SETTINGS: &'static [Setting<Self>] = &[
        setting!(
            "alertmanager_url",
            "SKIFF_ALERTMANAGER_URL",
            "--alertmanager-url",
            alertmanager_url = |v| parse::url(v).map(Some),
            "Alertmanager's URL (e.g. http://127.0.0.1:9093): SLO and budget alerts are posted to its v2 API",
        ),
        setting!(
            "alert_webhook_url",
            "SKIFF_ALERT_WEBHOOK_URL",
            "--alert-webhook-url",
            alert_webhook_url = |v| parse::url(v).map(Some),
            "A URL SLO and budget alerts are posted to, in Alertmanager's webhook format",
        ),
    ];
}

/// Request logs and traces. The trace settings are OpenTelemetry's own variables.
#[derive(Debug, Clone)]
pub struct RequestsConfig {
    /// Whether each request gets a line in its revision's request log.
    pub request_logs: bool,
    /// The OTLP/HTTP base URL (`…/v1/traces` is appended).
    pub otlp_endpoint: Option<String>,
    /// The OTLP/HTTP traces URL, as is (wins over `otlp_endpoint`).
    pub otlp_traces_endpoint: Option<String>,
    /// The sampler's name, as given ([`RequestsConfig::sampler`] reads it with its argument).
    sampler_name: Option<String>,
    /// The sampler's argument, as given.
    sampler_arg: Option<String>,
}

impl Default for RequestsConfig {
    fn default() -> Self {
        RequestsConfig {
            request_logs: true,
            otlp_endpoint: None,
            otlp_traces_endpoint: None,
            sampler_name: None,
            sampler_arg: None,
        }
    }
}

impl RequestsConfig {
    /// The traces URL, when traces are on: the traces endpoint as given, else the base
    /// endpoint with `/v1/traces`, as OpenTelemetry's exporters resolve them.
    pub fn traces_url(&self) -> Option<String> {
        if let Some(u) = &self.otlp_traces_endpoint {
            return Some(u.clone());
        }
        let base = self.otlp_endpoint.as_deref()?;
        Some(format!("{}/v1/traces", base.trim_end_matches('/')))
    }

    fn parse_sampler(&self) -> Result<skiff_requests::Sampler, skiff_requests::SamplerError> {
        match &self.sampler_name {
            Some(name) => skiff_requests::Sampler::parse(name, self.sampler_arg.as_deref()),
            None => Ok(skiff_requests::Sampler::default()),
        }
    }

    /// The head sampler (validated when the configuration was read).
    pub fn sampler(&self) -> skiff_requests::Sampler {
        self.parse_sampler().unwrap_or_default()
    }
}

impl Section for RequestsConfig {
    const SETTINGS: &'static [Setting<Self>] = &[
        setting!(
            "request_logs",
            "SKIFF_REQUEST_LOGS",
            "--request-logs",
            request_logs = parse::boolean,
            "Write one line per request to its revision's request log (`skiff logs SERVICE --requests`) [default: true]",
        ),
        setting!(
            "otlp_endpoint",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "--otlp-endpoint",
            otlp_endpoint = |v| parse::url(v).map(Some),
            "Export traces over OTLP/HTTP (protobuf) to this collector (`/v1/traces` is appended) [default: no traces]",
        ),
        setting!(
            "otlp_traces_endpoint",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "--otlp-traces-endpoint",
            otlp_traces_endpoint = |v| parse::url(v).map(Some),
            "Export traces over OTLP/HTTP (protobuf) to this URL, as is",
        ),
        setting!(
            "traces_sampler",
            "OTEL_TRACES_SAMPLER",
            "--traces-sampler",
            sampler_name = |v: &str| Ok::<_, String>(Some(v.to_owned())),
            "The head sampler, by OpenTelemetry's names; failed, slow and cold requests are kept whatever it says [default: parentbased_always_on]",
        ),
        setting!(
            "traces_sampler_arg",
            "OTEL_TRACES_SAMPLER_ARG",
            "--traces-sampler-arg",
            sampler_arg = |v: &str| Ok::<_, String>(Some(v.to_owned())),
            "The sampler's ratio, 0 to 1, for the *traceidratio samplers [default: 1]",
        ),
    ];

    fn validate(&self) -> Vec<String> {
        match self.parse_sampler() {
            Ok(_) => Vec::new(),
            Err(e) => vec![format!("traces_sampler: {e}")],
        }
    }
}

impl Section for ImageSettings {
    const SETTINGS: &'static [Setting<Self>] = &[
        setting!(
            "registry_auth_file",
            "SKIFF_REGISTRY_AUTH_FILE",
            "--registry-auth-file",
            registry_auth_file = parse::auth_file,
            "A Docker config.json with registry credentials",
        ),
        setting!(
            "insecure_registries",
            "SKIFF_INSECURE_REGISTRIES",
            "--insecure-registry",
            insecure_registries = parse::registries,
            "Registries reached over plain HTTP, comma-separated",
        ),
        setting!(
            "registry_mirrors",
            "SKIFF_REGISTRY_MIRRORS",
            "--registry-mirror",
            registry_mirrors = parse::mirrors,
            "Registry mirrors: `REGISTRY=MIRROR[,MIRROR][;REGISTRY2=…]`",
        ),
    ];
}

/// The settings' parsers: each turns a value's text into a field or says what is wrong.
mod parse {
    use super::*;

    /// A number of type `T` within `range`; else "must be `what`".
    pub(super) fn within<T: FromStr + PartialOrd>(
        v: &str,
        range: std::ops::RangeInclusive<T>,
        what: &str,
    ) -> Result<T, String> {
        match v.parse::<T>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(format!("`{v}` must be {what}")),
        }
    }

    /// An http:// or https:// URL.
    pub(super) fn url(v: &str) -> Result<String, String> {
        let ok = (v.starts_with("http://") || v.starts_with("https://"))
            && v.split("://").nth(1).is_some_and(|rest| !rest.is_empty())
            && !v.chars().any(char::is_whitespace);
        if ok {
            Ok(v.to_owned())
        } else {
            Err(format!("`{v}` must be an http:// or https:// URL"))
        }
    }

    /// A price: a finite number of dollars, 0 or more.
    pub(super) fn price(v: &str) -> Result<f64, String> {
        match v.parse::<f64>() {
            Ok(p) if p.is_finite() && p >= 0.0 => Ok(p),
            _ => Err(format!("`{v}` must be a price in dollars, 0 or more")),
        }
    }

    /// Whole seconds from `min` to an hour.
    pub(super) fn seconds(v: &str, min: u64) -> Result<Duration, String> {
        let what = format!("a number of seconds from {min} to 3600");
        within(v, min..=3600, &what).map(Duration::from_secs)
    }

    /// A connection cap from 16 to 1000000; 0 too when `zero_is_share` (the ingress's
    /// share of the open-file limit; the API has no such default).
    pub(super) fn connections(v: &str, zero_is_share: bool) -> Result<usize, String> {
        let what = "a number of connections from 16 to 1000000";
        match v.parse::<usize>() {
            Ok(0) if zero_is_share => Ok(0),
            _ if zero_is_share => within(
                v,
                16..=1_000_000,
                &format!("{what} (or 0: a share of the open-file limit)"),
            ),
            _ => within(v, 16..=1_000_000, what),
        }
    }

    /// An autoscaling rate: Knative requires it above 1 (a rate of 1 would never scale).
    pub(super) fn rate(v: &str) -> Result<f64, String> {
        match v.parse::<f64>() {
            Ok(n) if n > 1.0 && n <= 1_000_000.0 => Ok(n),
            _ => Err(format!("`{v}` must be a number above 1 (at most 1000000)")),
        }
    }

    pub(super) fn boolean(v: &str) -> Result<bool, String> {
        match v {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("`{v}` must be true or false")),
        }
    }

    pub(super) fn absolute_path(v: &str) -> Result<PathBuf, String> {
        if v.starts_with('/') {
            Ok(PathBuf::from(v))
        } else {
            Err(format!("`{v}` must be an absolute path"))
        }
    }

    pub(super) fn address(v: &str) -> Result<SocketAddr, String> {
        v.parse()
            .map_err(|_| format!("`{v}` is not an address such as 127.0.0.1:7070"))
    }

    /// A DNS subdomain, lowercased, without a trailing dot.
    pub(super) fn domain(v: &str) -> Result<String, String> {
        let v = v.trim_end_matches('.').to_ascii_lowercase();
        skiff_api::names::check_dns1123_subdomain(&v)?;
        Ok(v)
    }

    pub(super) fn log_filter(v: &str) -> Result<String, String> {
        match skiff_telemetry::parse_filter(v) {
            Ok(_) => Ok(v.to_owned()),
            Err(e) => Err(skiff_telemetry::ErrorChain(&e).to_string()),
        }
    }

    pub(super) fn runtime(v: &str) -> Result<String, String> {
        match v {
            "runc" | "crun" => Ok(v.to_owned()),
            p if p.starts_with('/') => Ok(v.to_owned()),
            other => Err(format!(
                "`{other}` must be runc, crun or an absolute path to one of them"
            )),
        }
    }

    /// A Docker `config.json` that can be read now.
    pub(super) fn auth_file(v: &str) -> Result<Option<PathBuf>, String> {
        let path = PathBuf::from(v);
        match skiff_image::auth::CredentialStore::from_file(&path) {
            Ok(_) => Ok(Some(path)),
            Err(e) => Err(skiff_telemetry::ErrorChain(&e).to_string()),
        }
    }

    /// Registry hosts, comma-separated.
    pub(super) fn registries(v: &str) -> Result<Vec<String>, Problems> {
        let mut hosts = Vec::new();
        let mut problems = Vec::new();
        for h in v.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            match check_registry_host(h) {
                Ok(()) => hosts.push(h.to_owned()),
                Err(e) => problems.push(e),
            }
        }
        if problems.is_empty() {
            Ok(hosts)
        } else {
            Err(Problems(problems))
        }
    }

    /// Mirrors per registry: `REGISTRY=MIRROR[,MIRROR][;REGISTRY2=…]`.
    pub(super) fn mirrors(v: &str) -> Result<BTreeMap<String, Vec<String>>, Problems> {
        let mut mirrors = BTreeMap::new();
        let mut problems = Vec::new();
        for part in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((registry, list)) = part.split_once('=') else {
                problems.push(format!("`{part}` must be REGISTRY=MIRROR[,MIRROR]"));
                continue;
            };
            let registry = registry.trim().trim_matches('"').to_owned();
            let mut hosts = Vec::new();
            for m in list.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                let host = m
                    .trim_start_matches("http://")
                    .trim_start_matches("https://");
                match check_registry_host(host).and(check_registry_host(&registry)) {
                    Ok(()) => hosts.push(m.to_owned()),
                    Err(e) => problems.push(e),
                }
            }
            mirrors.insert(registry, hosts);
        }
        if problems.is_empty() {
            Ok(mirrors)
        } else {
            Err(Problems(problems))
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
}

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

/// Reads the configuration: the file (`config_file`, else `SKIFF_CONFIG`, else
/// [`DEFAULT_CONFIG_FILE`] when it exists), then the environment, then `flags`.
pub fn load(
    config_file: Option<&Path>,
    env: &dyn Environment,
    flags: &Flags,
) -> Result<(Config, LoadReport), ConfigError> {
    let specs = Config::specs();
    let mut problems = Vec::new();
    let mut report = LoadReport::default();
    let mut raw = Raw::new();
    let vars = env.skiff_vars();
    let (path, explicit) = match (config_file, vars.get("SKIFF_CONFIG")) {
        (Some(p), _) => (p.to_path_buf(), true),
        (None, Some(p)) => (PathBuf::from(p), true),
        (None, None) => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            read_file(&specs, &path, &text, &mut raw, &mut problems);
            report.file = Some(path);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {}
        Err(e) => problems.push(format!("config file {}: {e}", path.display())),
    }
    for (k, v) in &vars {
        match specs.iter().find(|s| s.env == k) {
            Some(s) => {
                raw.insert(s.key, (v.clone(), Source::Env(s.env)));
            }
            None if CLIENT_ENV.contains(&k.as_str()) => {}
            None => report.unknown_env.push(k.clone()),
        }
    }
    for (k, v) in flags {
        if let Some(s) = specs.iter().find(|s| s.key == *k) {
            raw.insert(s.key, (v.clone(), Source::Flag(s.flag)));
        }
    }
    let config = Config::from_raw(&raw, &mut problems);
    if problems.is_empty() {
        Ok((config, report))
    } else {
        Err(ConfigError { problems })
    }
}

/// The values of the file at `path` (read as `text`) into `raw`, and its problems.
fn read_file(
    specs: &[&'static Spec],
    path: &Path,
    text: &str,
    raw: &mut Raw,
    problems: &mut Vec<String>,
) {
    let table = match text.parse::<toml::Table>() {
        Ok(table) => table,
        Err(e) => return problems.push(format!("{}: not valid TOML: {e}", path.display())),
    };
    for (k, v) in &table {
        let Some(spec) = specs.iter().find(|s| s.key == k) else {
            let known = specs.iter().map(|s| s.key).collect::<Vec<_>>().join(", ");
            problems.push(format!(
                "{k} ({}): unknown setting; known: {known}",
                path.display()
            ));
            continue;
        };
        match toml_value_to_string(v) {
            Some(v) => {
                raw.insert(spec.key, (v, Source::File(path.to_path_buf())));
            }
            None => problems.push(format!(
                "{k} ({}): must be a string, a number, a list of strings, or (registry_mirrors) a table of lists",
                path.display()
            )),
        }
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
        assert_eq!(config.daemon.data_dir, PathBuf::from("/var/lib/skiff"));
        assert_eq!(config.api.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(config.ingress.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.daemon.domain, "localhost");
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
        assert_eq!(config.daemon.data_dir, PathBuf::from("/srv/skiff"));
        assert_eq!(config.api.listen.to_string(), "127.0.0.1:9001");
        assert_eq!(config.daemon.domain, "flag.example");
        assert_eq!(config.api.max_body_bytes, 2048);
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
        assert_eq!(config.ingress.router_threads, 0);
        let (config, _) =
            load(None, &env(&[("SKIFF_ROUTER_THREADS", "2")]), &Flags::new()).expect("valid");
        assert_eq!(config.ingress.router_threads, 2);
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
                config.ingress.max_connections,
                config.ingress.header_read_timeout,
                config.ingress.idle_timeout,
                config.api.max_connections
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
                config.ingress.max_connections,
                config.ingress.header_read_timeout,
                config.ingress.idle_timeout,
                config.api.max_connections
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
        assert!(config.autoscaling.enable_scale_to_zero);
        assert_eq!(
            (
                config.autoscaling.max_scale_up_rate,
                config.autoscaling.max_scale_down_rate
            ),
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
        assert!(!config.autoscaling.enable_scale_to_zero);
        assert_eq!(
            (
                config.autoscaling.max_scale_up_rate,
                config.autoscaling.max_scale_down_rate
            ),
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
        assert_eq!(
            config.runtime.termination_grace_period,
            Duration::from_secs(10)
        );
        let vars = env(&[("SKIFF_TERMINATION_GRACE_PERIOD_SECONDS", "2")]);
        let (config, _) = load(None, &vars, &Flags::new()).expect("valid");
        assert_eq!(
            config.runtime.termination_grace_period,
            Duration::from_secs(2)
        );
        let mut flags = Flags::new();
        flags.insert("termination_grace_period_seconds", "45".into());
        let (config, _) = load(None, &vars, &flags).expect("valid");
        assert_eq!(
            config.runtime.termination_grace_period,
            Duration::from_secs(45)
        );
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
        assert_eq!(config.daemon.domain, "localhost");
    }

    /// The network settings: a policy and an upstream, from the file or the environment;
    /// a bad policy is reported with its source.
    #[test]
    fn network_settings() {
        let dir = no_file();
        let file = dir.path().join("skiff.toml");
        std::fs::write(
            &file,
            "egress_default = \"none\"\ndns_upstream = \"127.0.0.1:5353\"\n",
        )
        .expect("write");
        let (config, _) = load(Some(&file), &env(&[]), &Flags::new()).expect("valid");
        assert_eq!(
            config.network.egress_default,
            skiff_api::egress::EgressPolicy::None
        );
        assert_eq!(
            config.network.dns_upstream,
            Some("127.0.0.1:5353".parse().expect("addr"))
        );
        let vars = env(&[("SKIFF_EGRESS_DEFAULT", "api.example.test:443, 10.0.0.0/8")]);
        let (config, _) = load(Some(&file), &vars, &Flags::new()).expect("valid");
        assert!(
            config
                .network
                .egress_default
                .allows_named("api.example.test", Some(443))
        );
        let vars = env(&[("SKIFF_EGRESS_DEFAULT", "none,all")]);
        let e = load(Some(&file), &vars, &Flags::new()).expect_err("invalid");
        assert!(e.to_string().contains("egress_default"), "{e}");
        assert!(
            Config::defaults().network.egress_default == skiff_api::egress::EgressPolicy::Public
        );
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
            config.images.insecure_registries,
            vec!["registry.lan:5000".to_owned()]
        );
        assert_eq!(
            config.images.registry_mirrors.get("docker.io"),
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
        assert_eq!(config.images.registry_mirrors.len(), 2);
        assert_eq!(
            config.images.insecure_registries,
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
