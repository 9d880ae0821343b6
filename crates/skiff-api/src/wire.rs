//! What crosses the REST API besides the manifests and objects of [`crate::object`]: the
//! bodies of the scale, instance, log, image and version endpoints, and the names of the
//! headers skiff adds. The daemon serves these types, the control plane, the runtime and the
//! image store build them, and the client reads them back, so a field exists in one place.
//!
//! Plain data only: no I/O. The runtime and the image store re-export the types they produce
//! (`skiff_runtime::instance::InstanceStatus`, `skiff_image::ImageRecord`, …).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Request header carrying the request id; the response repeats it (or the one skiff made).
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Response header saying what an apply did: `created`, `configured` or `unchanged`.
pub const APPLY_RESULT_HEADER: &str = "skiff-apply-result";
/// Response header naming the revision an apply stamped, when it stamped one.
pub const CREATED_REVISION_HEADER: &str = "skiff-created-revision";

// Scale: `/services/{name}/scale`.

/// A manual override of how many instances of a Service's latest revision run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scale {
    /// Instances wanted for the latest revision.
    pub replicas: u32,
}

/// A Service's scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleStatus {
    /// The manual override of the latest revision's instance count, if set.
    pub replicas_override: Option<u32>,
    /// Why its revisions are not scaled up, while they are not: its cost budget
    /// (`skiff.dev/budget`) is spent, until when, and how to lift it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up_stopped: Option<String>,
    /// Its revisions that run, are routed, or have been scaled.
    pub revisions: Vec<RevisionScale>,
}

/// A revision's scale, load, cold starts and recent decisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionScale {
    /// The revision.
    pub revision: String,
    /// Instances wanted now (the override when one applies, else the autoscaler's).
    pub desired: u32,
    /// The autoscaler's last decision.
    pub autoscaler_desired: u32,
    /// Instances ready and taking requests.
    pub ready: u32,
    /// Requests in flight to its instances.
    pub in_flight: u32,
    /// Requests waiting in the activator.
    pub waiting: u32,
    /// Whether traffic can reach it.
    pub routed: bool,
    /// Whether the autoscaler is in panic mode.
    pub panicking: bool,
    /// Stable-window average of the scaling metric.
    pub stable_average: f64,
    /// Panic-window average of the scaling metric.
    pub panic_average: f64,
    /// Cold starts (scale from zero with requests waiting).
    pub cold_starts: u64,
    /// Their total duration, seconds.
    pub cold_start_seconds_total: f64,
    /// The last one's duration, seconds.
    pub last_cold_start_seconds: Option<f64>,
    /// Requests that waited through a cold start.
    pub cold_start_requests: u64,
    /// Recent decisions that changed the desired scale, newest first.
    pub decisions: Vec<DecisionView>,
}

/// One scaling decision as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecisionView {
    /// When (RFC 3339).
    pub at: String,
    /// Instances wanted.
    pub desired: u32,
    /// Ready instances when it was made.
    pub ready: u32,
    /// Whether panic mode was on.
    pub panicking: bool,
    /// Why.
    pub reason: String,
}

// Instances: `/services/{name}/instances`.

/// An instance as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    /// The instance id.
    pub id: String,
    /// Its revision.
    pub revision: String,
    /// Its state.
    #[schema(value_type = Object)]
    pub status: InstanceStatus,
    /// Resource usage read from its cgroups.
    #[schema(value_type = Object)]
    pub usage: Usage,
}

/// An instance's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// The phase.
    pub phase: Phase,
    /// Whether the instance takes traffic.
    pub ready: bool,
    /// Whether it was ever ready.
    pub was_ready: bool,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Milliseconds from start to first readiness.
    pub start_to_ready_ms: Option<f64>,
    /// How its start was spent, phase by phase (M5): set once every container's process has
    /// started, `readyMs` added at first readiness. None for an instance the daemon did not
    /// schedule itself (one re-adopted after a restart) and until its containers run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<StartupPhases>,
    /// Per container.
    pub containers: Vec<ContainerStatus>,
    /// How it was started (its last start): `fresh` (created and started on demand),
    /// `parked` (created ahead, started on demand: see [`Phase::Parked`]) or `frozen`
    /// (thawed: see [`Phase::Frozen`]).
    #[serde(default)]
    pub start_kind: StartKind,
}

/// How an instance was started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StartKind {
    /// Created and started when wanted.
    #[default]
    Fresh,
    /// Created ahead (parked), its processes released when wanted.
    Parked,
    /// Kept frozen (cgroup freezer) when it was no longer wanted, thawed when wanted again.
    Frozen,
}

impl StartKind {
    /// Every kind.
    pub const ALL: [StartKind; 3] = [StartKind::Fresh, StartKind::Parked, StartKind::Frozen];

    /// `fresh`, `parked` or `frozen`.
    pub fn as_str(self) -> &'static str {
        match self {
            StartKind::Fresh => "fresh",
            StartKind::Parked => "parked",
            StartKind::Frozen => "frozen",
        }
    }
}

/// How an instance's start was spent (M5); each phase begins where the one before ended.
///
/// `image` runs from the daemon's decision to start the instance to the runtime being handed
/// its plan (images resolved to their unpacked layers, the plan made and recorded);
/// `container` from there until every container's process runs (network namespace, `/etc`
/// files, volumes, overlay, `runc`); `ready` from there to the first passing readiness of
/// every container. Durations are measured on a monotonic clock.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartupPhases {
    /// When the daemon decided to start it (Unix time, nanoseconds).
    pub scheduled_unix_nanos: u64,
    /// Decision to images resolved and the plan made, in milliseconds.
    pub image_ms: f64,
    /// Images ready to the container's process started (namespace, files, runc), ms.
    pub container_ms: f64,
    /// Container started to first readiness, ms; none until it is ready.
    pub ready_ms: Option<f64>,
}

impl StartupPhases {
    /// Decision to first readiness, ms, once ready.
    pub fn total_ms(&self) -> Option<f64> {
        self.ready_ms
            .map(|ready| self.image_ms + self.container_ms + ready)
    }
}

/// The phase of an instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Containers starting, not ready yet.
    #[default]
    Starting,
    /// Parked: every container created (rootfs, namespaces, cgroup, `runc create`), its
    /// process held before exec until the instance is wanted. Takes no traffic and is not
    /// billed.
    Parked,
    /// Running (ready or not: see `ready`).
    Running,
    /// Frozen (cgroup freezer): kept whole, its memory held, no CPU; takes no traffic and is
    /// not billed until thawed.
    Frozen,
    /// Being stopped.
    Stopping,
    /// Gone; nothing left behind.
    Stopped,
}

impl Phase {
    /// The phase as the API writes it: `starting`, `parked`, `running`, `stopping`,
    /// `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Parked => "parked",
            Phase::Running => "running",
            Phase::Frozen => "frozen",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
        }
    }
}

/// A container's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container's name.
    pub name: String,
    /// The runtime's container id.
    pub runtime_id: String,
    /// Its init pid on the host, while running.
    pub pid: Option<i32>,
    /// Whether its process runs.
    pub running: bool,
    /// Whether its readiness probe passes.
    pub ready: bool,
    /// Restarts so far.
    pub restarts: u32,
    /// Why it is not running (`ContainerCreating`, `CrashLoopBackOff`, …).
    pub waiting_reason: Option<String>,
    /// How it last ended.
    pub last_termination: Option<Termination>,
    /// While its readiness probe fails (and the container is not ready): how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_failure: Option<ProbeFailure>,
}

/// A readiness probe that keeps failing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeFailure {
    /// The last failure, e.g. `tcp connect to port 8080: Connection refused (os error 111)`.
    pub message: String,
    /// When the probe first failed in this run of failures (RFC 3339).
    pub since: String,
}

/// How a container last ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Termination {
    /// `Completed`, `Error`, `OOMKilled`, `StartError`, `LivenessFailed`, `Unknown`.
    pub reason: String,
    /// The exit code (128+signal for signals), when known.
    pub exit_code: Option<i32>,
    /// When (RFC 3339).
    pub at: String,
    /// What happened, for people.
    pub message: String,
    /// The container's last log lines.
    pub last_lines: Vec<String>,
}

/// Resource usage of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// CPU time used, in nanoseconds.
    pub cpu_nanos: u64,
    /// Memory in use now, in bytes.
    pub memory_bytes: u64,
    /// Highest memory use, in bytes.
    pub memory_peak_bytes: u64,
    /// The memory limit, in bytes (0: none).
    pub memory_limit_bytes: u64,
    /// Processes and threads now.
    pub pids: u64,
    /// Times the OOM killer killed a process here.
    pub oom_kills: u64,
    /// CFS periods in which the container was throttled.
    pub throttled_periods: u64,
    /// Times a fork or thread creation failed at the pids limit.
    pub pids_limit_hits: u64,
}

impl Usage {
    /// Adds another container's usage (for an instance's total).
    pub fn add(&mut self, o: &Usage) {
        self.cpu_nanos += o.cpu_nanos;
        self.memory_bytes += o.memory_bytes;
        self.memory_peak_bytes += o.memory_peak_bytes;
        self.memory_limit_bytes += o.memory_limit_bytes;
        self.pids += o.pids;
        self.oom_kills += o.oom_kills;
        self.throttled_periods += o.throttled_periods;
        self.pids_limit_hits += o.pids_limit_hits;
    }
}

// Logs: `/services/{name}/logs` (NDJSON).

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When skiff read it (RFC 3339, nanoseconds).
    pub ts: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The instance.
    pub instance: String,
    /// The container.
    pub container: String,
    /// The text, without the newline.
    pub line: String,
}

/// One request the ingress answered, as the revision's request log keeps it
/// (`/services/{name}/requests`, NDJSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestLogLine {
    /// When it arrived (RFC 3339, nanoseconds).
    pub ts: String,
    /// Its `X-Request-Id`.
    pub request_id: String,
    /// Its W3C trace id.
    pub trace_id: String,
    /// The method.
    pub method: String,
    /// The host it was routed by.
    pub host: String,
    /// The path, without the query.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// Arrival to the response's last byte, in milliseconds.
    pub duration_ms: f64,
    /// Response body bytes sent.
    pub bytes: u64,
    /// The revision.
    pub revision: String,
    /// The instance that answered, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Whether it waited for an instance to start.
    pub cold_start: bool,
    /// How long it waited for one, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_ms: Option<f64>,
    /// Why skiff refused it, if it did: `queue_full`, `queue_timeout`, `max_scale`, `budget`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled: Option<String>,
    /// True when the response was cut short (by the instance or the client).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

/// A request's log line with its instance's output around it
/// (`/services/{name}/requests/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestTrail {
    /// The request.
    pub request: RequestLogLine,
    /// The answering instance's lines from a second before it arrived to a second after it
    /// ended, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub logs: Vec<LogLine>,
}

// Images: `/images…`; pulls and imports stream `PullEvent`s as NDJSON.

/// An image with whether revisions use it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageView {
    /// The image.
    #[schema(value_type = Object)]
    pub image: ImageRecord,
    /// Whether a revision is pinned to it.
    pub in_use: bool,
}

/// An image in the content store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// The platform manifest's digest (the image's identity).
    pub digest: String,
    /// The index digest, when the image was chosen from an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    /// Names it is known by: `registry/repo:tag` or `registry/repo@digest`.
    pub references: Vec<String>,
    /// `registry/repo` it came from.
    pub repository: String,
    /// `os/arch`.
    pub platform: String,
    /// The config blob's digest.
    pub config_digest: String,
    /// What to run.
    pub config: RunConfig,
    /// Layers, base first.
    pub layers: Vec<LayerRecord>,
    /// Sum of the compressed layer sizes.
    pub size: u64,
    /// When it was pulled or imported (RFC 3339).
    pub created_at: String,
    /// `registry` or `import`.
    pub source: String,
}

impl ImageRecord {
    /// `repository@digest`, the pinned reference (the index digest when there is one).
    pub fn pinned(&self) -> String {
        format!(
            "{}@{}",
            self.repository,
            self.index_digest.as_deref().unwrap_or(&self.digest)
        )
    }
}

/// What the runtime needs from an image's config (`config` of the OCI/Docker image config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// The user (`uid`, `uid:gid`, or a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `PORT/tcp` keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    /// `NAME=value` entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// The entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// The default arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// The working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// The signal that stops the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerRecord {
    /// The compressed blob's digest.
    pub digest: String,
    /// The uncompressed content's digest (the unpacked directory's name).
    pub diff_id: String,
    /// The compressed size.
    pub size: u64,
    /// The media type.
    pub media_type: String,
}

/// What a prune (a garbage collection) removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    /// Images whose records were removed.
    pub images: Vec<String>,
    /// Blobs deleted.
    pub blobs: u64,
    /// Unpacked layers deleted.
    pub layers: u64,
    /// Bytes freed.
    pub bytes: u64,
}

/// Progress of a pull or import.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum PullEvent {
    /// The manifest is known.
    #[serde(rename_all = "camelCase")]
    Resolved {
        /// The reference pulled.
        reference: String,
        /// The manifest (or index) digest.
        digest: String,
        /// The endpoint that served it.
        registry: String,
        /// The layers.
        layers: Vec<LayerInfo>,
    },
    /// A layer's progress.
    #[serde(rename_all = "camelCase")]
    Layer {
        /// The blob digest.
        digest: String,
        /// What is happening.
        status: LayerStatus,
        /// Bytes downloaded.
        done: u64,
        /// The layer's size.
        total: u64,
    },
    /// The image is ready.
    #[serde(rename_all = "camelCase")]
    Done {
        /// The image.
        image: Box<ImageRecord>,
        /// Seconds the pull took.
        seconds: f64,
        /// Bytes downloaded (0 when everything was present).
        bytes: u64,
    },
    /// The pull failed.
    #[serde(rename_all = "camelCase")]
    Error {
        /// What went wrong, with the registry's own message.
        message: String,
        /// A short reason (`not_found`, `unauthorized`, `corrupt`, …).
        reason: String,
    },
}

/// The state of one layer during a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LayerStatus {
    /// Downloading (bytes in `done`).
    Downloading,
    /// Already unpacked; nothing to download.
    Cached,
    /// Unpacking.
    Unpacking,
    /// Ready.
    Done,
}

/// A layer in a `resolved` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerInfo {
    /// The blob digest.
    pub digest: String,
    /// Its size.
    pub size: u64,
}

// Meta: `/version`.

/// The daemon's version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    /// The skiff version.
    pub version: String,
    /// The store's schema version.
    pub store_schema_version: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Phase::as_str` is the phase's JSON form, for every phase.
    #[test]
    fn phase_names_are_their_json() {
        for p in [
            Phase::Starting,
            Phase::Running,
            Phase::Stopping,
            Phase::Stopped,
        ] {
            assert_eq!(
                serde_json::to_value(p).expect("a phase serializes"),
                serde_json::Value::from(p.as_str())
            );
        }
    }

    /// An instance view serializes with the field names the API has always used, nested
    /// status and usage included.
    #[test]
    fn instance_view_shape() {
        let v = InstanceView {
            id: "i1".into(),
            revision: "hello-00001".into(),
            status: InstanceStatus {
                phase: Phase::Running,
                ready: true,
                was_ready: true,
                started_at: "2026-01-01T00:00:00Z".into(),
                start_to_ready_ms: Some(12.0),
                startup: Some(StartupPhases {
                    scheduled_unix_nanos: 1_767_225_600_000_000_000,
                    image_ms: 2.0,
                    container_ms: 7.0,
                    ready_ms: Some(5.0),
                }),
                containers: vec![ContainerStatus {
                    name: "user-container".into(),
                    last_termination: Some(Termination {
                        reason: "Error".into(),
                        exit_code: Some(1),
                        at: "2026-01-01T00:00:00Z".into(),
                        message: "exited".into(),
                        last_lines: vec![],
                    }),
                    ..ContainerStatus::default()
                }],
                start_kind: StartKind::Parked,
            },
            usage: Usage {
                memory_limit_bytes: 1,
                ..Usage::default()
            },
        };
        let json = serde_json::to_value(&v).expect("a view serializes");
        assert_eq!(json["status"]["phase"], "running");
        assert_eq!(json["status"]["startKind"], "parked");
        assert_eq!(json["status"]["startToReadyMs"], 12.0);
        assert_eq!(json["status"]["startup"]["imageMs"], 2.0);
        assert_eq!(json["status"]["startup"]["readyMs"], 5.0);
        assert_eq!(
            json["status"]["startup"]["scheduledUnixNanos"],
            1_767_225_600_000_000_000u64
        );
        assert_eq!(
            json["status"]["containers"][0]["lastTermination"]["exitCode"],
            1
        );
        assert_eq!(json["usage"]["memoryLimitBytes"], 1);
        let back: InstanceView = serde_json::from_value(json).expect("and reads back");
        assert_eq!(back.status, v.status);
        assert_eq!(back.usage, v.usage);
    }

    /// A status without start-up phases (a re-adopted instance, or an older daemon's) reads,
    /// and is written without the field; the total is the sum of the phases once ready.
    #[test]
    fn startup_phases_are_optional_and_sum_up() {
        let old = serde_json::json!({
            "phase": "running", "ready": true, "wasReady": true,
            "startedAt": "2026-01-01T00:00:00Z", "startToReadyMs": 3.0, "containers": []
        });
        let s: InstanceStatus = serde_json::from_value(old).expect("an older status reads");
        assert_eq!(s.startup, None);
        assert_eq!(s.start_kind, StartKind::Fresh);
        let json = serde_json::to_value(&s).expect("serializes");
        assert!(json.get("startup").is_none(), "{json}");
        let mut p = StartupPhases {
            scheduled_unix_nanos: 1,
            image_ms: 1.5,
            container_ms: 20.0,
            ready_ms: None,
        };
        assert_eq!(p.total_ms(), None);
        p.ready_ms = Some(8.5);
        assert_eq!(p.total_ms(), Some(30.0));
    }
}

/// An alert firing now (an SLO burning its error budget too fast, or a cost budget spent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// `AvailabilityBurn`, `LatencyBurn`, `BudgetSpent` or `RolloutFailed`.
    pub name: String,
    /// The namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// `availability`, `latency`, `budget` or `rollout`.
    pub kind: String,
    /// `page` or `ticket`.
    pub severity: String,
    /// Since when (RFC 3339).
    pub since: String,
}

/// The alerts firing now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertList {
    /// Each alert, by namespace, Service, kind and severity.
    pub alerts: Vec<Alert>,
}

/// Services' SLOs and budgets as last evaluated (every 10 s).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SloList {
    /// Each Service with an SLO or a budget: its report (objectives, SLI, budget left,
    /// burn rates per window) and its budget spent.
    #[schema(value_type = Vec<Object>)]
    pub services: Vec<serde_json::Value>,
}

/// What a Service did in one step of time, from the daemon's history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsPoint {
    /// The step's start (RFC 3339).
    pub at: String,
    /// Requests answered.
    pub requests: u64,
    /// Of which 5xx.
    pub errors: u64,
    /// Latency quantiles in seconds (none without requests).
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Requests that waited for a cold start.
    pub cold_starts: u64,
    /// Requests the router refused itself.
    pub throttled: u64,
    /// Most instances running at once.
    pub instances: u32,
    /// CPU used, in seconds.
    pub cpu_seconds: f64,
    /// Cost at the configured prices, in dollars.
    pub cost: f64,
}

/// A Service's history over a time range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMetrics {
    /// The namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// Seconds per point.
    pub step_seconds: i64,
    /// One point per step, oldest first (steps with nothing are zeros).
    pub points: Vec<MetricsPoint>,
}

/// One Service now, as `skiff top` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopRow {
    /// The namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// Requests per second over the window.
    pub rps: f64,
    /// Share of requests not answered 5xx (none without requests).
    pub success: Option<f64>,
    /// Latency quantiles in seconds.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Instances running now.
    pub instances: u32,
    /// Share of requests that waited for a cold start.
    pub cold_start_rate: Option<f64>,
    /// Cost per hour at the window's pace, in dollars.
    pub cost_per_hour: f64,
}

/// Every Service now, over the last minute of history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Top {
    /// The window the rates are over, in seconds.
    pub window_seconds: i64,
    /// Each Service with history.
    pub services: Vec<TopRow>,
}

/// A one-time login for the dashboard (`POST /api/v1/dashboard/login`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DashboardLogin {
    /// The path to open on the API's address, `/ui/login?code=…`; it works once.
    pub path: String,
    /// Until when it works (RFC 3339).
    pub expires_at: String,
}
