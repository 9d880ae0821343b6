//! Knative's rules for a Service, checked with every problem reported at its field path.
//!
//! The rules follow knative/serving's webhook validation (`pkg/apis/serving/v1`,
//! `pkg/apis/serving/k8s_validation.go`) for the fields skiff accepts; where skiff departs
//! from Knative the rule says why. Rules that need stored state (does a traffic target's
//! revision exist?) are checked by the daemon.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::autoscaling::AutoscalingSettings;
use crate::image::ImageRef;
use crate::names::*;
use crate::problems::{FieldPath, ProblemKind, Problems};
use crate::quantity::Quantity;
use crate::types::*;

/// Default `metadata.namespace`.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Longest `timeoutSeconds` accepted (Cloud Run's limit; Knative's default limit is 600).
pub const MAX_TIMEOUT_SECONDS: i64 = 3600;
/// Highest `containerConcurrency` (Knative and Cloud Run: 1000).
pub const MAX_CONTAINER_CONCURRENCY: i64 = 1000;
/// Environment variables skiff sets itself (Knative's runtime contract).
pub const RESERVED_ENV: &[&str] = &["PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"];
/// Paths a volume may not be mounted on (Knative's reserved paths, except `/tmp`: an emptyDir
/// there replaces the runtime's own `/tmp` tmpfs).
pub const RESERVED_MOUNT_PATHS: &[&str] = &["/", "/dev", "/dev/log", "/var", "/var/log"];
/// Trees a volume may not be mounted on or under: the kernel's file systems the runtime
/// mounts itself (`/dev/shm` excepted: a Memory emptyDir there is common).
pub const RUNTIME_MOUNT_TREES: &[&str] = &["/proc", "/sys", "/dev"];
/// Files skiff mounts into every container itself.
pub const RUNTIME_MOUNT_FILES: &[&str] = &["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"];
/// Annotation prefix of skiff's own settings.
pub const SKIFF_ANNOTATION_PREFIX: &str = "skiff.dev/";
/// The `skiff.dev/` annotations this version understands (each feature that adds one lists
/// it here, and any other `skiff.dev/` key is an error).
pub const SKIFF_ANNOTATIONS: &[&str] = &[
    crate::egress::EGRESS_ANNOTATION,
    crate::slo::SLO_AVAILABILITY_ANNOTATION,
    crate::slo::SLO_LATENCY_ANNOTATION,
    crate::slo::SLO_PERIOD_ANNOTATION,
    crate::slo::SLO_POLICY_ANNOTATION,
    crate::slo::BUDGET_ANNOTATION,
    crate::rollout::ROLLOUT_ANNOTATION,
    crate::rollout::ROLLOUT_STEP_ANNOTATION,
    crate::rollout::ROLLOUT_ANALYSIS_ANNOTATION,
    crate::rollout::ROLLOUT_MIN_REQUESTS_ANNOTATION,
    WARM_ANNOTATION,
];

/// What a revision's instances become when it scales to zero: `frozen` keeps one frozen
/// (cgroup freezer) and thaws it for the next request instead of starting one; `off` (the
/// default) stops them.
pub const WARM_ANNOTATION: &str = "skiff.dev/warm";

/// Whether a revision's template asks to keep a frozen instance at zero.
pub fn warm_frozen(annotations: &BTreeMap<String, String>) -> bool {
    annotations.get(WARM_ANNOTATION).map(|v| v.trim()) == Some("frozen")
}
/// Labels skiff sets on revisions, which users may not set.
pub const SYSTEM_LABELS: &[&str] = &[
    "serving.knative.dev/service",
    "serving.knative.dev/serviceUID",
    "serving.knative.dev/configuration",
    "serving.knative.dev/configurationUID",
    "serving.knative.dev/configurationGeneration",
    "serving.knative.dev/revision",
    "serving.knative.dev/revisionUID",
    "serving.knative.dev/route",
];
/// Knative's annotation bounding how long a revision may take to become ready.
pub const PROGRESS_DEADLINE_ANNOTATION: &str = "serving.knative.dev/progress-deadline";
/// The progress deadline when the annotation is not set (Knative's default is 600 s; a user
/// trying skiff on one machine learns sooner).
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(120);
/// The longest progress deadline accepted.
pub const MAX_PROGRESS_DEADLINE: Duration = Duration::from_secs(3600);

/// A revision's progress deadline from its annotations (unparsable values were refused by
/// validation; they read as the default).
pub fn progress_deadline(annotations: &BTreeMap<String, String>) -> Duration {
    annotations
        .get(PROGRESS_DEADLINE_ANNOTATION)
        .and_then(|v| crate::names::parse_go_duration(v.trim()).ok())
        .filter(|d| !d.is_zero() && *d <= MAX_PROGRESS_DEADLINE)
        .unwrap_or(DEFAULT_PROGRESS_DEADLINE)
}

/// Largest total size of one object's annotations (Kubernetes: 256 KiB).
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
/// Characters the server appends to `generateName`.
pub const GENERATED_SUFFIX_LEN: usize = 5;
/// Length of the `-00001` suffix of generated revision names.
pub const REVISION_SUFFIX_LEN: usize = 6;

/// A Service that passed every stateless check.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedService {
    /// The manifest as written.
    pub manifest: ServiceManifest,
    /// The namespace (defaulted).
    pub namespace: String,
    /// The autoscaling settings of the revision template.
    pub autoscaling: AutoscalingSettings,
}

impl ValidatedService {
    /// The Service's name, when the manifest sets one (otherwise `generateName` is set).
    pub fn name(&self) -> Option<&str> {
        self.manifest.metadata.name.as_deref()
    }

    /// The revision template (present after validation).
    pub fn template(&self) -> &RevisionTemplate {
        static EMPTY: std::sync::OnceLock<RevisionTemplate> = std::sync::OnceLock::new();
        self.manifest
            .spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .unwrap_or_else(|| EMPTY.get_or_init(RevisionTemplate::default))
    }

    /// What the manifest asks for that skiff accepts but that changes nothing here, as
    /// `path: why` lines: the API returns them as `Warning` headers and the CLI prints them,
    /// so that no setting is dropped without a word.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(tbc) = self.autoscaling.target_burst_capacity
            && tbc != -1.0
        {
            let path = FieldPath::parse("spec.template.metadata.annotations")
                .key("autoscaling.knative.dev/target-burst-capacity");
            out.push(format!(
                "{path}: has no effect: skiff's activator is always in the request path, as \
                 Knative's -1 asks, so requests are buffered whatever the spare capacity"
            ));
        }
        out
    }
}

pub(crate) fn check_labels(labels: &BTreeMap<String, String>, at: &FieldPath, p: &mut Problems) {
    for (k, v) in labels {
        let path = at.key(k.clone());
        if let Err(e) = check_qualified_name(k) {
            p.invalid(&path, format!("invalid label key: {e}"));
        }
        if let Err(e) = check_label_value(v) {
            p.invalid(&path, e);
        }
        if SYSTEM_LABELS.contains(&k.as_str()) {
            p.push(
                &path,
                ProblemKind::NotAllowed,
                "not allowed: skiff sets this label itself",
            );
        }
    }
}

fn check_annotations(
    annotations: &BTreeMap<String, String>,
    at: &FieldPath,
    template: bool,
    p: &mut Problems,
) -> AutoscalingSettings {
    let mut size = 0usize;
    for (k, v) in annotations {
        size += k.len() + v.len();
        let path = at.key(k.clone());
        if let Err(e) = check_qualified_name(k) {
            p.invalid(&path, format!("invalid annotation key: {e}"));
        }
        // Annotations can reach a container's environment (fieldRef), which cannot hold NUL.
        if v.contains('\0') {
            p.invalid(&path, "must not contain a NUL byte");
        }
        if k == PROGRESS_DEADLINE_ANNOTATION {
            match crate::names::parse_go_duration(v.trim()) {
                Ok(d) if !d.is_zero() && d <= MAX_PROGRESS_DEADLINE => {}
                Ok(_) => p.invalid(&path, format!("`{v}` is out of range (1s to 1h)")),
                Err(e) => p.invalid(&path, e),
            }
        }
        if k.starts_with(SKIFF_ANNOTATION_PREFIX) && !SKIFF_ANNOTATIONS.contains(&k.as_str()) {
            let known = if SKIFF_ANNOTATIONS.is_empty() {
                "this version of skiff defines none".to_owned()
            } else {
                format!("known ones: {}", SKIFF_ANNOTATIONS.join(", "))
            };
            p.push(
                &path,
                ProblemKind::UnknownField,
                format!("unknown skiff annotation ({known})"),
            );
        }
        if k == WARM_ANNOTATION {
            if !template {
                p.invalid(
                    &path,
                    "set it on the revision template (spec.template.metadata.annotations)",
                );
            } else if !matches!(v.trim(), "frozen" | "off") {
                p.invalid(
                    &path,
                    format!("`{v}` is not a warm mode: `frozen` (keep one instance frozen at zero) or `off`"),
                );
            }
        }
        if k == crate::egress::EGRESS_ANNOTATION {
            if !template {
                p.invalid(
                    &path,
                    "set it on the revision template (spec.template.metadata.annotations)",
                );
            } else if let Err(e) = v.parse::<crate::egress::EgressPolicy>() {
                p.invalid(&path, e.0);
            }
        }
        if !template && crate::rollout::TEMPLATE_ANNOTATIONS.contains(&k.as_str()) {
            p.invalid(
                &path,
                "set it on the revision template (spec.template.metadata.annotations): a \
                 rollout follows the policy of the revision it rolls out",
            );
        }
        if template && k == crate::rollout::KNATIVE_ROLLOUT_DURATION_ANNOTATION {
            p.invalid(
                &path,
                "set it on the Service's metadata.annotations, where Knative reads it",
            );
        }
        if template && crate::slo::SERVICE_ANNOTATIONS.contains(&k.as_str()) {
            p.invalid(
                &path,
                "set it on the Service's metadata.annotations: it applies to the whole \
                 Service, not to one revision",
            );
        }
    }
    let empty = BTreeMap::new();
    let (tmpl, svc) = if template {
        (annotations, &empty)
    } else {
        (&empty, annotations)
    };
    if let Err(errors) = crate::rollout::policy_of(tmpl, svc) {
        for e in errors {
            p.invalid(&at.key(e.annotation), e.reason);
        }
    }
    if !template {
        for e in crate::slo::slo_errors(annotations) {
            for annotation in e.annotations() {
                p.invalid(&at.key(annotation), e.reason());
            }
        }
    }
    if size > MAX_ANNOTATIONS_BYTES {
        p.invalid(
            at,
            format!("annotations total {size} bytes; at most {MAX_ANNOTATIONS_BYTES} are allowed"),
        );
    }
    AutoscalingSettings::from_annotations(annotations, at, p)
}

fn check_seconds(value: Option<i64>, lo: i64, hi: i64, path: &FieldPath, p: &mut Problems) {
    if let Some(v) = value
        && !(lo..=hi).contains(&v)
    {
        p.invalid(path, format!("{v} is out of range ({lo} to {hi})"));
    }
}

/// Checks a Service manifest. Returns the validated Service when it is well-formed enough to
/// be read further; the caller decides from `problems` whether it is accepted.
pub fn validate_service(m: ServiceManifest, p: &mut Problems) -> Option<ValidatedService> {
    let root = FieldPath::root();
    match m.api_version.as_deref() {
        None => p.required(&root.key("apiVersion")),
        Some(SERVING_API_VERSION) => {}
        Some(v @ ("serving.knative.dev/v1alpha1" | "serving.knative.dev/v1beta1")) => p.invalid(
            &root.key("apiVersion"),
            format!("`{v}` is retired; write `{SERVING_API_VERSION}`"),
        ),
        Some(v) => p.invalid(
            &root.key("apiVersion"),
            format!("`{v}` is not accepted: skiff reads `{SERVING_API_VERSION}` Services"),
        ),
    }
    match m.kind.as_deref() {
        None => p.required(&root.key("kind")),
        Some("Service") => {}
        Some(k @ ("Configuration" | "Route" | "Revision")) => p.not_supported(
            &root.key("kind"),
            format!("applying a `{k}` directly; apply the Service that owns it"),
        ),
        Some(k) => p.invalid(
            &root.key("kind"),
            format!("`{k}` is not accepted: must be `Service`"),
        ),
    }

    let meta = root.key("metadata");
    let name = m.metadata.name.as_deref();
    match (name, m.metadata.generate_name.as_deref()) {
        (None, None) => p.push(
            &meta.key("name"),
            ProblemKind::Required,
            "required (or set metadata.generateName)",
        ),
        (Some(n), _) => {
            if let Err(e) = check_dns1035_label(n) {
                p.invalid(&meta.key("name"), e);
            }
        }
        (None, Some(prefix)) => {
            let probe = format!("{prefix}{}", "a".repeat(GENERATED_SUFFIX_LEN));
            if let Err(e) = check_dns1035_label(&probe) {
                p.invalid(
                    &meta.key("generateName"),
                    format!("`{prefix}` cannot prefix a name: {e}"),
                );
            }
        }
    }
    let namespace = m
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    if let Err(e) = check_dns1123_label(&namespace) {
        p.invalid(&meta.key("namespace"), e);
    }
    if let Some(rv) = &m.metadata.resource_version
        && rv.parse::<i64>().map_or(true, |v| v < 0)
    {
        p.invalid(
            &meta.key("resourceVersion"),
            format!("`{rv}` is not a resource version (copy it from `skiff get -o yaml`)"),
        );
    }
    check_labels(&m.metadata.labels, &meta.key("labels"), p);
    // Knative validates autoscaling annotations on the Service too, though only the
    // template's take effect.
    check_annotations(&m.metadata.annotations, &meta.key("annotations"), false, p);

    let spec_path = root.key("spec");
    let Some(spec) = &m.spec else {
        p.required(&spec_path);
        return None;
    };
    let template_path = spec_path.key("template");
    let mut autoscaling = AutoscalingSettings::default();
    match &spec.template {
        None => p.required(&template_path),
        Some(template) => {
            let tmeta = template_path.key("metadata");
            if let Some(tname) = &template.metadata.name {
                match name {
                    Some(service) if !tname.starts_with(&format!("{service}-")) => p.invalid(
                        &tmeta.key("name"),
                        format!("`{tname}` must start with the Service's name: `{service}-`"),
                    ),
                    None => p.invalid(
                        &tmeta.key("name"),
                        "cannot be set together with metadata.generateName",
                    ),
                    _ => {}
                }
                if let Err(e) = check_dns1035_label(tname) {
                    p.invalid(&tmeta.key("name"), e);
                }
            } else if let Some(n) = name
                && n.len() + REVISION_SUFFIX_LEN > DNS_LABEL_MAX
            {
                p.invalid(
                    &meta.key("name"),
                    format!(
                        "must be at most {} characters so that revision names (`{n}-00001`) fit in {DNS_LABEL_MAX}",
                        DNS_LABEL_MAX - REVISION_SUFFIX_LEN
                    ),
                );
            }
            check_labels(&template.metadata.labels, &tmeta.key("labels"), p);
            autoscaling = check_annotations(
                &template.metadata.annotations,
                &tmeta.key("annotations"),
                true,
                p,
            );
            match &template.spec {
                None => p.required(&template_path.key("spec")),
                Some(rs) => validate_revision_spec(rs, &template_path.key("spec"), p),
            }
        }
    }
    if let Some(traffic) = &spec.traffic {
        validate_traffic(traffic, name, &spec_path.key("traffic"), p);
    }
    Some(ValidatedService {
        manifest: m,
        namespace,
        autoscaling,
    })
}

/// The port a revision serves on: the one declared, or 8080.
pub fn serving_port(spec: &RevisionSpec) -> (usize, u16) {
    for (i, c) in spec.containers.iter().enumerate() {
        if let Some(port) = c.ports.first() {
            let n = port
                .container_port
                .and_then(|n| u16::try_from(n).ok())
                .unwrap_or(8080);
            return (i, n);
        }
    }
    (0, 8080)
}

pub(crate) fn validate_revision_spec(rs: &RevisionSpec, at: &FieldPath, p: &mut Problems) {
    let containers_path = at.key("containers");
    if rs.containers.is_empty() {
        p.push(
            &containers_path,
            ProblemKind::Required,
            "at least one container is required",
        );
    }
    let with_ports: Vec<usize> = rs
        .containers
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.ports.is_empty())
        .map(|(i, _)| i)
        .collect();
    if rs.containers.len() > 1 && with_ports.len() != 1 {
        p.invalid(
            &containers_path,
            format!(
                "with several containers exactly one must declare the serving port (found {})",
                with_ports.len()
            ),
        );
    }
    let (serving_index, port) = serving_port(rs);
    let volume_names: BTreeSet<&str> = rs
        .volumes
        .iter()
        .filter_map(|v| v.name.as_deref())
        .collect();
    let container_names: BTreeSet<&str> = rs
        .containers
        .iter()
        .filter_map(|c| c.name.as_deref())
        .collect();
    let mut seen_names = BTreeSet::new();
    let mut mounted = BTreeSet::new();
    for (i, c) in rs.containers.iter().enumerate() {
        let cp = containers_path.index(i);
        if let Some(n) = &c.name {
            if let Err(e) = check_dns1123_label(n) {
                p.invalid(&cp.key("name"), e);
            }
            if !seen_names.insert(n.as_str()) {
                p.invalid(&cp.key("name"), format!("duplicate container name `{n}`"));
            }
        }
        validate_container(
            c,
            &cp,
            ContainerCtx {
                serving: i == serving_index,
                port,
                volumes: &volume_names,
                containers: &container_names,
            },
            &mut mounted,
            p,
        );
    }

    let mut seen_volumes = BTreeSet::new();
    for (i, v) in rs.volumes.iter().enumerate() {
        let vp = at.key("volumes").index(i);
        match &v.name {
            None => p.required(&vp.key("name")),
            Some(n) => {
                if let Err(e) = check_dns1123_label(n) {
                    p.invalid(&vp.key("name"), e);
                }
                if !seen_volumes.insert(n.clone()) {
                    p.invalid(&vp.key("name"), format!("duplicate volume name `{n}`"));
                }
                if !mounted.contains(n.as_str()) {
                    p.invalid(&vp, format!("volume `{n}` is not mounted by any container"));
                }
            }
        }
        let sources = [
            v.empty_dir.is_some(),
            v.secret.is_some(),
            v.config_map.is_some(),
            v.projected.is_some(),
        ];
        match sources.iter().filter(|s| **s).count() {
            0 => p.invalid(&vp, "set one of emptyDir, secret, configMap or projected"),
            1 => {}
            _ => p.invalid(
                &vp,
                "set only one of emptyDir, secret, configMap and projected",
            ),
        }
        validate_config_volume(v, &vp, p);
        if v.is_config() {
            // Knative: a volume of Secrets or ConfigMaps is mounted read-only.
            for (ci, c) in rs.containers.iter().enumerate() {
                for (mi, m) in c.volume_mounts.iter().enumerate() {
                    if m.name == v.name && m.read_only != Some(true) {
                        p.invalid(
                            &containers_path
                                .index(ci)
                                .key("volumeMounts")
                                .index(mi)
                                .key("readOnly"),
                            "must be true: secret, configMap and projected volumes are read-only",
                        );
                    }
                }
            }
        }
        if let Some(ed) = &v.empty_dir {
            let ep = vp.key("emptyDir");
            match ed.medium.as_deref() {
                None | Some("") | Some("Memory") => {}
                Some(other) => p.invalid(
                    &ep.key("medium"),
                    format!("`{other}` is not a medium: use \"\" (disk) or `Memory`"),
                ),
            }
            if let Some(q) = &ed.size_limit
                && let Err(e) = Quantity::parse(&q.0)
            {
                p.invalid(&ep.key("sizeLimit"), e.to_string());
            }
        }
    }

    match rs.container_concurrency {
        Some(cc) if !(0..=MAX_CONTAINER_CONCURRENCY).contains(&cc) => p.invalid(
            &at.key("containerConcurrency"),
            format!("{cc} is out of range (0 to {MAX_CONTAINER_CONCURRENCY}; 0 means no limit)"),
        ),
        _ => {}
    }
    let timeout = rs
        .timeout_seconds
        .unwrap_or(crate::defaults::TIMEOUT_SECONDS);
    check_seconds(
        rs.timeout_seconds,
        1,
        MAX_TIMEOUT_SECONDS,
        &at.key("timeoutSeconds"),
        p,
    );
    check_seconds(
        rs.response_start_timeout_seconds,
        1,
        timeout.clamp(1, MAX_TIMEOUT_SECONDS),
        &at.key("responseStartTimeoutSeconds"),
        p,
    );
    check_seconds(
        rs.idle_timeout_seconds,
        1,
        MAX_TIMEOUT_SECONDS,
        &at.key("idleTimeoutSeconds"),
        p,
    );
    for (i, s) in rs.image_pull_secrets.iter().enumerate() {
        let sp = at.key("imagePullSecrets").index(i);
        check_object_name(s.name.as_deref(), &sp, p);
    }
}

/// Checks a file mode (`defaultMode`, `items[].mode`): 0 to 0777.
fn check_mode(mode: Option<i64>, at: &FieldPath, p: &mut Problems) {
    if let Some(m) = mode
        && !(0..=0o777).contains(&m)
    {
        p.invalid(at, format!("{m} is not a file mode (0 to 0777, i.e. 511)"));
    }
}

/// Checks the items of a Secret or ConfigMap volume source at `at`.
fn check_items(items: &[KeyToPath], at: &FieldPath, p: &mut Problems) {
    let mut paths = BTreeSet::new();
    for (i, it) in items.iter().enumerate() {
        let ip = at.key("items").index(i);
        match it.key.as_deref() {
            None => p.required(&ip.key("key")),
            Some(k) => {
                if let Err(e) = crate::config::check_data_key(k) {
                    p.invalid(&ip.key("key"), e);
                }
            }
        }
        match it.path.as_deref() {
            None => p.required(&ip.key("path")),
            Some(path) => {
                if let Err(e) = check_item_path(path) {
                    p.invalid(&ip.key("path"), e);
                } else if !paths.insert(path) {
                    p.invalid(&ip.key("path"), format!("duplicate path `{path}`"));
                }
            }
        }
        check_mode(it.mode, &ip.key("mode"), p);
    }
}

/// A file path inside a volume: relative, no `..` element, not empty, no NUL.
pub fn check_item_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    if path.starts_with('/') {
        return Err(format!("`{path}` must be a relative path"));
    }
    if path.contains('\0') {
        return Err("must not contain a NUL byte".into());
    }
    if path.split('/').any(|s| s == "..") {
        return Err(format!("`{path}` must not contain `..`"));
    }
    if path.split('/').all(|s| s.is_empty() || s == ".") {
        return Err(format!("`{path}` names no file"));
    }
    Ok(())
}

/// Checks a secret, configMap or projected volume at `vp`.
fn validate_config_volume(v: &Volume, vp: &FieldPath, p: &mut Problems) {
    if let Some(s) = &v.secret {
        let sp = vp.key("secret");
        match s.secret_name.as_deref() {
            None => p.required(&sp.key("secretName")),
            Some(n) => {
                if let Err(e) = check_dns1123_subdomain(n) {
                    p.invalid(&sp.key("secretName"), e);
                }
            }
        }
        check_items(&s.items, &sp, p);
        check_mode(s.default_mode, &sp.key("defaultMode"), p);
    }
    if let Some(c) = &v.config_map {
        let cp = vp.key("configMap");
        check_object_name(c.name.as_deref(), &cp, p);
        check_items(&c.items, &cp, p);
        check_mode(c.default_mode, &cp.key("defaultMode"), p);
    }
    if let Some(pr) = &v.projected {
        let pp = vp.key("projected");
        check_mode(pr.default_mode, &pp.key("defaultMode"), p);
        for (i, src) in pr.sources.iter().enumerate() {
            let sp = pp.key("sources").index(i);
            match (&src.secret, &src.config_map) {
                (Some(_), Some(_)) => p.invalid(&sp, "set only one of secret and configMap"),
                (None, None) => p.invalid(&sp, "set secret or configMap"),
                (Some(o), None) => {
                    check_object_name(o.name.as_deref(), &sp.key("secret"), p);
                    check_items(&o.items, &sp.key("secret"), p);
                }
                (None, Some(o)) => {
                    check_object_name(o.name.as_deref(), &sp.key("configMap"), p);
                    check_items(&o.items, &sp.key("configMap"), p);
                }
            }
        }
    }
}

/// Checks the `name` of a reference to a Secret or ConfigMap at `at`.
fn check_object_name(name: Option<&str>, at: &FieldPath, p: &mut Problems) {
    match name {
        None => p.required(&at.key("name")),
        Some(n) => {
            if let Err(e) = check_dns1123_subdomain(n) {
                p.invalid(&at.key("name"), e);
            }
        }
    }
}

struct ContainerCtx<'a> {
    serving: bool,
    port: u16,
    volumes: &'a BTreeSet<&'a str>,
    containers: &'a BTreeSet<&'a str>,
}

fn validate_container(
    c: &Container,
    at: &FieldPath,
    ctx: ContainerCtx<'_>,
    mounted: &mut BTreeSet<String>,
    p: &mut Problems,
) {
    match &c.image {
        None => p.required(&at.key("image")),
        Some(image) => {
            if let Err(e) = image.parse::<ImageRef>() {
                p.invalid(&at.key("image"), e.to_string());
            }
        }
    }
    for (i, e) in c.env.iter().enumerate() {
        validate_env(e, &at.key("env").index(i), ctx.containers, p);
    }
    // The kernel takes a program's arguments and environment as NUL-terminated strings: a
    // NUL inside one can never be passed.
    for (field, list) in [("command", &c.command), ("args", &c.args)] {
        for (i, v) in list.iter().enumerate() {
            if v.contains('\0') {
                p.invalid(&at.key(field).index(i), "must not contain a NUL byte");
            }
        }
    }
    for (i, e) in c.env_from.iter().enumerate() {
        let ep = at.key("envFrom").index(i);
        if let Some(prefix) = &e.prefix
            && !prefix.is_empty()
            && let Err(err) = check_env_name(prefix)
        {
            p.invalid(&ep.key("prefix"), err);
        }
        match (&e.config_map_ref, &e.secret_ref) {
            (Some(_), Some(_)) => p.invalid(&ep, "set only one of configMapRef and secretRef"),
            (None, None) => p.invalid(&ep, "set configMapRef or secretRef"),
            (Some(r), None) => check_object_name(r.name.as_deref(), &ep.key("configMapRef"), p),
            (None, Some(r)) => check_object_name(r.name.as_deref(), &ep.key("secretRef"), p),
        }
    }
    if c.ports.len() > 1 {
        p.invalid(
            &at.key("ports"),
            format!("at most one port may be declared (found {})", c.ports.len()),
        );
    }
    for (i, port) in c.ports.iter().enumerate() {
        let pp = at.key("ports").index(i);
        match port.name.as_deref() {
            None | Some("") | Some("http1") | Some("h2c") => {}
            Some(_) => p.invalid(&pp.key("name"), "must be \"http1\" or \"h2c\""),
        }
        if let Some(n) = port.container_port
            && !(1..=65535).contains(&n)
        {
            p.invalid(
                &pp.key("containerPort"),
                format!("{n} is out of range (1 to 65535)"),
            );
        }
        match port.protocol.as_deref() {
            None | Some("TCP") => {}
            Some(other) => p.invalid(
                &pp.key("protocol"),
                format!("`{other}` is not supported: must be \"TCP\""),
            ),
        }
    }
    if let Some(r) = &c.resources {
        validate_resources(r, &at.key("resources"), p);
    }
    for (field, probe) in [
        ("readinessProbe", &c.readiness_probe),
        ("livenessProbe", &c.liveness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        if let Some(probe) = probe {
            validate_probe(probe, field, &at.key(field), &ctx, p);
        }
    }
    if let Some(wd) = &c.working_dir
        && wd.contains('\0')
    {
        p.invalid(&at.key("workingDir"), "must not contain a NUL byte");
    } else if let Some(wd) = &c.working_dir
        && !wd.starts_with('/')
    {
        p.invalid(
            &at.key("workingDir"),
            format!("`{wd}` must be an absolute path"),
        );
    }
    if let Some(sc) = &c.security_context {
        validate_security_context(sc, &at.key("securityContext"), p);
    }
    let mut mount_paths = BTreeSet::new();
    for (i, vm) in c.volume_mounts.iter().enumerate() {
        let mp = at.key("volumeMounts").index(i);
        match &vm.name {
            None => p.required(&mp.key("name")),
            Some(n) if !ctx.volumes.contains(n.as_str()) => p.invalid(
                &mp.key("name"),
                format!("no volume named `{n}` in spec.template.spec.volumes"),
            ),
            Some(n) => {
                mounted.insert(n.clone());
            }
        }
        match &vm.mount_path {
            None => p.required(&mp.key("mountPath")),
            Some(path) => {
                // `//x/./y/` is `/x/y`.
                let normalized = format!(
                    "/{}",
                    path.split('/')
                        .filter(|s| !s.is_empty() && *s != ".")
                        .collect::<Vec<_>>()
                        .join("/")
                );
                let normalized = normalized.as_str();
                let under = |tree: &str| {
                    normalized == tree
                        || normalized
                            .strip_prefix(tree)
                            .is_some_and(|rest| rest.starts_with('/'))
                };
                if !path.starts_with('/') {
                    p.invalid(
                        &mp.key("mountPath"),
                        format!("`{path}` must be an absolute path"),
                    );
                } else if path.contains('\0') {
                    p.invalid(&mp.key("mountPath"), "must not contain a NUL byte");
                } else if RESERVED_MOUNT_PATHS.contains(&normalized) {
                    p.invalid(
                        &mp.key("mountPath"),
                        format!(
                            "`{path}` is reserved (reserved: {})",
                            RESERVED_MOUNT_PATHS.join(", ")
                        ),
                    );
                } else if let Some(tree) = RUNTIME_MOUNT_TREES
                    .iter()
                    .find(|t| under(t) && !(**t == "/dev" && under("/dev/shm")))
                {
                    p.invalid(
                        &mp.key("mountPath"),
                        format!(
                            "`{path}` is under `{tree}`, which the container runtime mounts itself (of /dev, only /dev/shm may take a volume)"
                        ),
                    );
                } else if RUNTIME_MOUNT_FILES.contains(&normalized) {
                    p.invalid(
                        &mp.key("mountPath"),
                        format!(
                            "`{path}` is mounted by skiff itself ({})",
                            RUNTIME_MOUNT_FILES.join(", ")
                        ),
                    );
                } else if path.split('/').any(|s| s == "..") {
                    p.invalid(&mp.key("mountPath"), "must not contain `..`");
                }
                if !mount_paths.insert(normalized.to_owned()) {
                    p.invalid(&mp.key("mountPath"), format!("`{path}` is mounted twice"));
                }
            }
        }
        if let Some(sub) = &vm.sub_path
            && (sub.starts_with('/') || sub.split('/').any(|s| s == ".."))
        {
            p.invalid(&mp.key("subPath"), "must be a relative path without `..`");
        }
    }
    match c.image_pull_policy.as_deref() {
        None | Some("Always") | Some("IfNotPresent") | Some("Never") => {}
        Some(other) => p.invalid(
            &at.key("imagePullPolicy"),
            format!("`{other}` must be Always, IfNotPresent or Never"),
        ),
    }
}

const FIELD_REFS: &[&str] = &["metadata.name", "metadata.namespace", "metadata.uid"];
const RESOURCE_REFS: &[&str] = &[
    "limits.cpu",
    "limits.memory",
    "requests.cpu",
    "requests.memory",
];

fn validate_env(e: &EnvVar, at: &FieldPath, containers: &BTreeSet<&str>, p: &mut Problems) {
    match &e.name {
        None => p.required(&at.key("name")),
        Some(n) => {
            if let Err(err) = check_env_name(n) {
                p.invalid(&at.key("name"), err);
            }
            if RESERVED_ENV.contains(&n.as_str()) {
                p.invalid(
                    &at.key("name"),
                    format!(
                        "`{n}` is reserved: skiff sets it (reserved: {})",
                        RESERVED_ENV.join(", ")
                    ),
                );
            }
        }
    }
    if e.value.as_deref().is_some_and(|v| v.contains('\0')) {
        p.invalid(&at.key("value"), "must not contain a NUL byte");
    }
    let Some(from) = &e.value_from else { return };
    let fp = at.key("valueFrom");
    if e.value.is_some() {
        p.invalid(at, "set only one of value and valueFrom");
    }
    let sources = [
        from.secret_key_ref.is_some(),
        from.config_map_key_ref.is_some(),
        from.field_ref.is_some(),
        from.resource_field_ref.is_some(),
    ];
    match sources.iter().filter(|s| **s).count() {
        0 => p.invalid(
            &fp,
            "set one of secretKeyRef, configMapKeyRef, fieldRef or resourceFieldRef",
        ),
        1 => {}
        _ => p.invalid(&fp, "set only one source"),
    }
    for (field, sel) in [
        ("secretKeyRef", &from.secret_key_ref),
        ("configMapKeyRef", &from.config_map_key_ref),
    ] {
        let Some(sel) = sel else { continue };
        let sp = fp.key(field);
        check_object_name(sel.name.as_deref(), &sp, p);
        match sel.key.as_deref() {
            None => p.required(&sp.key("key")),
            Some(k) => {
                if let Err(e) = crate::config::check_data_key(k) {
                    p.invalid(&sp.key("key"), e);
                }
            }
        }
    }
    if let Some(f) = &from.field_ref {
        let path = fp.key("fieldRef").key("fieldPath");
        match f.field_path.as_deref() {
            None => p.required(&path),
            Some(fpath) if FIELD_REFS.contains(&fpath) => {}
            Some(fpath)
                if (fpath.starts_with("metadata.labels['")
                    || fpath.starts_with("metadata.annotations['"))
                    && fpath.ends_with("']") => {}
            Some(fpath) => p.not_supported(
                &path,
                format!(
                    "the field `{fpath}`; supported: {}, metadata.labels['KEY'], metadata.annotations['KEY']",
                    FIELD_REFS.join(", ")
                ),
            ),
        }
    }
    if let Some(r) = &from.resource_field_ref {
        let rp = fp.key("resourceFieldRef");
        match r.resource.as_deref() {
            None => p.required(&rp.key("resource")),
            Some(res) if RESOURCE_REFS.contains(&res) => {}
            Some(res) => p.invalid(
                &rp.key("resource"),
                format!("`{res}` must be one of {}", RESOURCE_REFS.join(", ")),
            ),
        }
        if let Some(cn) = &r.container_name
            && !containers.contains(cn.as_str())
        {
            p.invalid(
                &rp.key("containerName"),
                format!("no container named `{cn}`"),
            );
        }
        if let Some(d) = &r.divisor {
            match Quantity::parse(&d.0) {
                Ok(q) if q.is_zero() => p.invalid(&rp.key("divisor"), "must not be zero"),
                Ok(_) => {}
                Err(e) => p.invalid(&rp.key("divisor"), e.to_string()),
            }
        }
    }
}

/// Smallest memory limit accepted; runc cannot start a container below a few MiB.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

fn validate_resources(r: &ResourceRequirements, at: &FieldPath, p: &mut Problems) {
    let mut parsed: BTreeMap<(&str, &str), Quantity> = BTreeMap::new();
    for (kind, map) in [("limits", &r.limits), ("requests", &r.requests)] {
        for (res, q) in map {
            let path = at.key(kind).key(res.clone());
            match res.as_str() {
                "cpu" | "memory" | "ephemeral-storage" => {}
                other if other.contains('/') || other.starts_with("hugepages-") => {
                    p.not_supported(&path, format!("the resource `{other}`"));
                    continue;
                }
                other => {
                    p.invalid(
                        &path,
                        format!("unknown resource `{other}`: use cpu, memory or ephemeral-storage"),
                    );
                    continue;
                }
            }
            match Quantity::parse(&q.0) {
                Ok(v) => {
                    if kind == "limits" && v.is_zero() {
                        p.invalid(&path, "a limit must be more than zero");
                    } else if kind == "limits" && res == "memory" && v.as_units() < MIN_MEMORY_BYTES
                    {
                        p.invalid(&path, "a memory limit must be at least 6Mi");
                    }
                    parsed.insert((kind, res.as_str()), v);
                }
                Err(e) => p.invalid(&path, e.to_string()),
            }
        }
    }
    for res in ["cpu", "memory", "ephemeral-storage"] {
        if let (Some(req), Some(lim)) =
            (parsed.get(&("requests", res)), parsed.get(&("limits", res)))
        {
            let (req_v, lim_v) = if res == "cpu" {
                (req.as_millis(), lim.as_millis())
            } else {
                (req.as_units(), lim.as_units())
            };
            if req_v > lim_v {
                p.invalid(
                    &at.key("requests").key(res),
                    format!("the {res} request is more than its limit"),
                );
            }
        }
    }
}

fn validate_probe(
    probe: &Probe,
    field: &str,
    at: &FieldPath,
    ctx: &ContainerCtx<'_>,
    p: &mut Problems,
) {
    let handlers = [
        probe.http_get.is_some(),
        probe.tcp_socket.is_some(),
        probe.exec.is_some(),
        probe.grpc.is_some(),
    ]
    .iter()
    .filter(|h| **h)
    .count();
    match handlers {
        0 if field == "readinessProbe" => {}
        0 => p.invalid(at, "set one of httpGet, tcpSocket or exec"),
        1 => {}
        _ => p.invalid(at, "set only one of httpGet, tcpSocket, exec or grpc"),
    }
    let check_port = |port: &Option<IntOrString>, path: FieldPath, p: &mut Problems| match port {
        None if ctx.serving => {}
        None => p.push(
            &path,
            ProblemKind::Required,
            "required: this container does not serve the revision's port",
        ),
        Some(IntOrString::Int(n)) if ctx.serving && *n != i64::from(ctx.port) => p.invalid(
            &path,
            format!("{n} must be the container's port ({}) or absent", ctx.port),
        ),
        Some(IntOrString::Int(n)) if !(1..=65535).contains(n) => {
            p.invalid(&path, format!("{n} is out of range (1 to 65535)"))
        }
        Some(IntOrString::Int(_)) => {}
        Some(IntOrString::String(s)) => {
            p.not_supported(&path, format!("the named port `{s}`; give the port number"))
        }
    };
    if let Some(h) = &probe.http_get {
        let hp = at.key("httpGet");
        check_port(&h.port, hp.key("port"), p);
        if let Some(path) = &h.path
            && !path.starts_with('/')
        {
            p.invalid(&hp.key("path"), format!("`{path}` must start with `/`"));
        }
        match h.scheme.as_deref() {
            None | Some("HTTP") => {}
            Some("HTTPS") => p.not_supported(&hp.key("scheme"), "HTTPS probes"),
            Some(other) => p.invalid(&hp.key("scheme"), format!("`{other}` must be HTTP")),
        }
        for (i, header) in h.http_headers.iter().enumerate() {
            let path = hp.key("httpHeaders").index(i);
            match &header.name {
                None => p.required(&path.key("name")),
                Some(n)
                    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_graphic() && b != b':') =>
                {
                    p.invalid(&path.key("name"), format!("`{n}` is not a header name"))
                }
                Some(_) => {}
            }
        }
    }
    if let Some(t) = &probe.tcp_socket {
        check_port(&t.port, at.key("tcpSocket").key("port"), p);
    }
    if let Some(e) = &probe.exec {
        if e.command.is_empty() {
            p.push(
                &at.key("exec").key("command"),
                ProblemKind::Required,
                "required: the command to run",
            );
        }
        for (i, v) in e.command.iter().enumerate() {
            if v.contains('\0') {
                p.invalid(
                    &at.key("exec").key("command").index(i),
                    "must not contain a NUL byte",
                );
            }
        }
    }
    if probe.grpc.is_some() {
        p.not_supported(
            &at.key("grpc"),
            "gRPC probes; use httpGet, tcpSocket or exec",
        );
    }
    let readiness = field == "readinessProbe";
    check_seconds(
        probe.initial_delay_seconds,
        0,
        3600,
        &at.key("initialDelaySeconds"),
        p,
    );
    check_seconds(probe.timeout_seconds, 1, 3600, &at.key("timeoutSeconds"), p);
    // Knative: periodSeconds 0 on a readiness probe means "probe aggressively".
    check_seconds(
        probe.period_seconds,
        if readiness { 0 } else { 1 },
        3600,
        &at.key("periodSeconds"),
        p,
    );
    check_seconds(
        probe.failure_threshold,
        1,
        1000,
        &at.key("failureThreshold"),
        p,
    );
    if readiness {
        check_seconds(
            probe.success_threshold,
            1,
            1000,
            &at.key("successThreshold"),
            p,
        );
    } else if let Some(s) = probe.success_threshold
        && s != 1
    {
        p.invalid(
            &at.key("successThreshold"),
            format!("{s} must be 1 for a {field}"),
        );
    }
}

const CAPABILITY_NAMES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

fn capability_name(c: &str) -> &str {
    c.strip_prefix("CAP_").unwrap_or(c)
}

fn validate_security_context(sc: &SecurityContext, at: &FieldPath, p: &mut Problems) {
    const MAX_ID: i64 = u32::MAX as i64 - 1;
    for (field, v) in [
        ("runAsUser", sc.run_as_user),
        ("runAsGroup", sc.run_as_group),
    ] {
        if let Some(id) = v
            && !(0..=MAX_ID).contains(&id)
        {
            p.invalid(
                &at.key(field),
                format!("{id} is out of range (0 to {MAX_ID})"),
            );
        }
    }
    if sc.run_as_non_root == Some(true) && sc.run_as_user == Some(0) {
        p.invalid(
            &at.key("runAsUser"),
            "0 (root) contradicts runAsNonRoot: true",
        );
    }
    if sc.allow_privilege_escalation == Some(true) {
        p.push(
            &at.key("allowPrivilegeEscalation"),
            ProblemKind::NotAllowed,
            "not allowed: skiff always runs containers with no-new-privileges",
        );
    }
    if let Some(caps) = &sc.capabilities {
        let cp = at.key("capabilities");
        for (i, c) in caps.add.iter().enumerate() {
            if capability_name(c) != "NET_BIND_SERVICE" {
                p.push(
                    &cp.key("add").index(i),
                    ProblemKind::NotAllowed,
                    format!("not allowed: `{c}`; Knative allows adding only NET_BIND_SERVICE"),
                );
            }
        }
        for (i, c) in caps.drop.iter().enumerate() {
            if c != "ALL" && !CAPABILITY_NAMES.contains(&capability_name(c)) {
                p.invalid(
                    &cp.key("drop").index(i),
                    format!("`{c}` is not a capability"),
                );
            }
        }
    }
    if let Some(sp) = &sc.seccomp_profile {
        let path = at.key("seccompProfile").key("type");
        match sp.profile_type.as_deref() {
            Some("RuntimeDefault") | Some("Unconfined") => {}
            Some("Localhost") => p.not_supported(&path, "custom seccomp profiles"),
            Some(other) => p.invalid(
                &path,
                format!("`{other}` must be RuntimeDefault or Unconfined"),
            ),
            None => p.required(&path),
        }
    }
}

fn validate_traffic(
    traffic: &[TrafficTarget],
    service: Option<&str>,
    at: &FieldPath,
    p: &mut Problems,
) {
    if traffic.is_empty() {
        p.invalid(
            at,
            "must have at least one target, or be left out to route 100% to the latest revision",
        );
        return;
    }
    let mut total = 0i64;
    let mut tags = BTreeSet::new();
    for (i, t) in traffic.iter().enumerate() {
        let tp = at.index(i);
        if let Some(cn) = &t.configuration_name {
            match service {
                Some(s) if s == cn => {}
                Some(s) => p.invalid(
                    &tp.key("configurationName"),
                    format!("`{cn}` must be this Service's configuration, `{s}`"),
                ),
                None => {}
            }
            if t.revision_name.is_some() {
                p.invalid(&tp, "set only one of revisionName and configurationName");
            }
        }
        match (&t.revision_name, t.latest_revision) {
            (Some(_), Some(true)) => p.invalid(
                &tp.key("latestRevision"),
                "may not be true when revisionName is set",
            ),
            (None, Some(false)) => p.invalid(
                &tp.key("latestRevision"),
                "may not be false when revisionName is absent",
            ),
            (Some(r), _) => {
                if let Err(e) = check_dns1035_label(r) {
                    p.invalid(&tp.key("revisionName"), e);
                }
            }
            _ => {}
        }
        if let Some(pct) = t.percent {
            if !(0..=100).contains(&pct) {
                p.invalid(
                    &tp.key("percent"),
                    format!("{pct} is out of range (0 to 100)"),
                );
            }
            total += pct;
        }
        if let Some(tag) = &t.tag {
            if let Err(e) = check_dns1035_label(tag) {
                p.invalid(&tp.key("tag"), e);
            } else if let Some(s) = service
                && tag.len() + 1 + s.len() > DNS_LABEL_MAX
            {
                p.invalid(
                    &tp.key("tag"),
                    format!("`{tag}-{s}` must fit in {DNS_LABEL_MAX} characters to be a host name"),
                );
            }
            if !tags.insert(tag.clone()) {
                p.invalid(&tp.key("tag"), format!("duplicate tag `{tag}`"));
            }
        }
    }
    if total != 100 {
        p.invalid(
            at,
            format!("the percentages sum to {total}; they must sum to 100"),
        );
    }
}
