//! Reading manifests: YAML (one or many documents) or JSON into typed Services, with every
//! problem reported at its field path and, for text input, its line and column.
//!
//! # Design
//! Three passes over the text, each with a maintained parser:
//! 1. `granit-parser` (the YAML parser under serde-saphyr) walks the events once to record
//!    where each path's key and value start, and to refuse nesting deeper than
//!    [`MAX_DEPTH`] before anything recursive runs.
//! 2. `serde-saphyr` turns each document into a `serde_json::Value` (anchors, merge keys,
//!    YAML 1.2 scalars, duplicate keys refused, budgets against resource exhaustion).
//! 3. The typed structs of [`crate::types`] are read from each value through `serde_ignored`
//!    (every unknown key, all at once) and `serde_path_to_error` (the path of a type error);
//!    then [`crate::validate`] checks values and Knative's rules.
//!
//! Unknown keys are sorted into: output-only fields (`status`, `metadata.uid`, …), which are
//! skipped as `kubectl apply` skips them, so `skiff get -o yaml | skiff apply -f -` works;
//! Knative or Kubernetes fields skiff does not support yet; fields Knative itself refuses; and
//! plain unknown fields, with a "did you mean" hint.

use std::collections::HashMap;

use granit_parser::{Event, Parser, ScalarStyle};
use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::granit_parser;

use crate::config::{
    self, CORE_API_VERSION, ConfigKind, ConfigMapManifest, ConfigMeta, SecretManifest,
    ValidatedConfig,
};
use crate::eventing;
use crate::fields;
use crate::job::{
    self, ExecutionSpec, ExecutionTemplate, JobManifest, JobSpec, TaskSpec, TaskTemplate,
    TemplateLabels, ValidatedJob,
};
use crate::problems::{FieldPath, Problem, ProblemKind, Problems, Segment};
use crate::suggest;
use crate::types::*;
use crate::validate::{self, ValidatedService};

/// Deepest nesting accepted in a manifest (Knative Services nest about 10 levels deep).
pub const MAX_DEPTH: usize = 48;
/// Most documents accepted in one input.
pub const MAX_DOCUMENTS: usize = 256;
/// Most items in one list (env entries, args, containers…): Kubernetes has no cap of its
/// own but bounds a whole object to 1.5 MiB; a thousand is far above any real Service and
/// keeps the work per request bounded.
pub const MAX_LIST_ITEMS: usize = 1000;
/// Most YAML nodes in one input (a thousand env entries are three thousand nodes).
pub const MAX_NODES: usize = 25_000;

/// Where a key and its value start, 1-based.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Position {
    key: Option<(u64, u64)>,
    value: (u64, u64),
}

/// Line and column of every path of one document.
#[derive(Debug, Clone, Default)]
pub struct PositionIndex {
    positions: HashMap<FieldPath, Position>,
}

impl PositionIndex {
    /// The line and column to show for a problem at `path`: the key for problems about the
    /// field itself, the value otherwise, or the nearest enclosing node that is known.
    pub fn locate(&self, path: &FieldPath, kind: ProblemKind) -> Option<(u64, u64)> {
        let mut p = path.clone();
        let mut exact = true;
        loop {
            if let Some(pos) = self.positions.get(&p) {
                let about_key = matches!(
                    kind,
                    ProblemKind::UnknownField | ProblemKind::NotSupported | ProblemKind::NotAllowed
                );
                return Some(if exact && about_key {
                    pos.key.unwrap_or(pos.value)
                } else {
                    pos.value
                });
            }
            if p.is_root() {
                return None;
            }
            p = p.parent();
            exact = false;
        }
    }
}

/// One document of an input, parsed into a generic value.
#[derive(Debug, Clone)]
pub struct Document {
    /// 0-based position among the input's non-empty documents.
    pub index: usize,
    /// The document as a JSON value.
    pub value: Value,
    /// Where its paths are in the input.
    pub positions: PositionIndex,
}

impl Document {
    /// A document built from a JSON value that has no text positions (an API body).
    pub fn from_value(value: Value) -> Self {
        Document {
            index: 0,
            value,
            positions: PositionIndex::default(),
        }
    }

    /// Turns collected problems into user-facing ones placed in this document.
    pub fn place(&self, problems: Problems, multi: bool) -> Vec<Problem> {
        let mut out = problems.into_problems(|p, k| self.positions.locate(p, k));
        // Problems read best in the order of the file.
        out.sort_by_key(|p| (p.line.unwrap_or(u64::MAX), p.column.unwrap_or(u64::MAX)));
        if multi {
            for p in &mut out {
                p.document = Some(self.index);
            }
        }
        out
    }

    /// The `metadata.name` of the document, if it has a string one.
    pub fn name(&self) -> Option<&str> {
        self.value.pointer("/metadata/name").and_then(Value::as_str)
    }

    /// The `kind` of the document, if it has a string one.
    pub fn kind(&self) -> Option<&str> {
        self.value.get("kind").and_then(Value::as_str)
    }
}

fn syntax_problem(message: String, line: Option<u64>, column: Option<u64>) -> Problem {
    Problem {
        path: String::new(),
        message,
        kind: ProblemKind::Syntax,
        line,
        column,
        document: None,
    }
}

enum Frame {
    Map {
        path: FieldPath,
        key: Option<String>,
        expecting_key: bool,
    },
    Seq {
        path: FieldPath,
        next: usize,
    },
    /// A complex (non-scalar) mapping key being skipped.
    Skip {
        depth: usize,
    },
}

/// Walks the YAML events of `text`, recording positions per non-empty document.
fn index_positions(text: &str) -> Result<Vec<PositionIndex>, Problem> {
    let mut docs = Vec::new();
    let mut current = PositionIndex::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut root_is_null = true;
    let mut documents = 0usize;
    let mut nodes = 0usize;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| {
            let m = e.marker();
            syntax_problem(
                format!("not valid YAML: {}", tidy_parser_message(&e.to_string())),
                Some(m.line() as u64),
                Some(m.col() as u64 + 1),
            )
        })?;
        let at = (span.start.line() as u64, span.start.col() as u64 + 1);
        let starts_node = matches!(
            event,
            Event::Scalar(..)
                | Event::SequenceStart(..)
                | Event::MappingStart(..)
                | Event::Alias(..)
        );
        let opens = matches!(event, Event::SequenceStart(..) | Event::MappingStart(..));
        match event {
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > MAX_DOCUMENTS {
                    return Err(syntax_problem(
                        format!("more than {MAX_DOCUMENTS} documents in one input"),
                        Some(at.0),
                        None,
                    ));
                }
                current = PositionIndex::default();
                stack.clear();
                root_is_null = true;
                continue;
            }
            Event::DocumentEnd => {
                if !root_is_null {
                    docs.push(std::mem::take(&mut current));
                }
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                match stack.last_mut() {
                    Some(Frame::Skip { depth }) if *depth > 1 => *depth -= 1,
                    _ => {
                        stack.pop();
                    }
                }
                continue;
            }
            _ => {}
        }
        if !starts_node {
            continue;
        }
        nodes += 1;
        if nodes > MAX_NODES {
            return Err(syntax_problem(
                format!("more than {MAX_NODES} values in one input (skiff's limit)"),
                Some(at.0),
                Some(at.1),
            ));
        }
        if stack.len() >= MAX_DEPTH {
            return Err(syntax_problem(
                format!("nested more than {MAX_DEPTH} levels deep"),
                Some(at.0),
                Some(at.1),
            ));
        }
        if let Some(Frame::Skip { depth }) = stack.last_mut() {
            if opens {
                *depth += 1;
            }
            continue;
        }
        if stack.is_empty() {
            root_is_null = match &event {
                Event::Scalar(v, style, _, tag) => {
                    let null_tag = tag.as_ref().is_some_and(|t| t.suffix() == "null");
                    null_tag
                        || (*style == ScalarStyle::Plain
                            && matches!(v.as_ref(), "" | "~" | "null" | "Null" | "NULL"))
                }
                _ => false,
            };
            current.positions.insert(
                FieldPath::root(),
                Position {
                    key: None,
                    value: at,
                },
            );
            if opens {
                let path = FieldPath::root();
                stack.push(match event {
                    Event::MappingStart(..) => Frame::Map {
                        path,
                        key: None,
                        expecting_key: true,
                    },
                    _ => Frame::Seq { path, next: 0 },
                });
            }
            continue;
        }
        let (path, key_at) = match stack.last_mut() {
            Some(Frame::Map {
                path,
                key,
                expecting_key,
            }) => {
                if *expecting_key {
                    *expecting_key = false;
                    match &event {
                        Event::Scalar(v, ..) => {
                            *key = Some(v.to_string());
                            current
                                .positions
                                .entry(path.key(v.to_string()))
                                .or_default()
                                .key = Some(at);
                        }
                        _ => {
                            *key = None;
                            if opens {
                                stack.push(Frame::Skip { depth: 1 });
                            }
                        }
                    }
                    continue;
                }
                *expecting_key = true;
                match key {
                    Some(k) => (path.key(k.clone()), true),
                    None => continue,
                }
            }
            Some(Frame::Seq { path, next }) => {
                if *next >= MAX_LIST_ITEMS {
                    let mut problem = syntax_problem(
                        format!("more than {MAX_LIST_ITEMS} items in one list (skiff's limit)"),
                        Some(at.0),
                        Some(at.1),
                    );
                    problem.path = path.to_string();
                    problem.kind = ProblemKind::Invalid;
                    return Err(problem);
                }
                let p = path.index(*next);
                *next += 1;
                (p, false)
            }
            Some(Frame::Skip { .. }) | None => continue,
        };
        let entry = current.positions.entry(path.clone()).or_default();
        entry.value = at;
        if !key_at {
            entry.key = None;
        }
        if opens {
            stack.push(match event {
                Event::MappingStart(..) => Frame::Map {
                    path,
                    key: None,
                    expecting_key: true,
                },
                _ => Frame::Seq { path, next: 0 },
            });
        }
    }
    Ok(docs)
}

/// Keeps the first line of a parser message, without the position (shown separately) or advice
/// meant for the parser's API users.
fn tidy_parser_message(raw: &str) -> String {
    let mut msg = raw.lines().next().unwrap_or_default().trim().to_owned();
    for cut in [", set DuplicateKeyPolicy", " at char ", " at line "] {
        if let Some(i) = msg.find(cut) {
            msg.truncate(i);
        }
    }
    msg
}

/// Splits YAML or JSON text into its non-empty documents.
///
/// A syntax error anywhere refuses the whole input (nothing is applied from a file that is
/// not well-formed), with the line and column of the error.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, Problem> {
    let positions = index_positions(text)?;
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        // YAML 1.2: only true/false are booleans, so `name: y` or `value: no` stay strings.
        strict_booleans: true,
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH + 2,
            max_documents: MAX_DOCUMENTS + 1,
        },
    };
    let values: Vec<Value> =
        serde_saphyr::from_multiple_with_options(text, options).map_err(|e| {
            let location = e.location();
            let message = e.without_snippet().to_string();
            syntax_problem(
                format!("not valid YAML: {}", tidy_parser_message(&message)),
                location.map(|l| l.line()),
                location.map(|l| l.column()),
            )
        })?;
    let aligned = positions.len() == values.len();
    let mut positions = positions.into_iter();
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(index, value)| Document {
            index,
            value,
            positions: if aligned {
                positions.next().unwrap_or_default()
            } else {
                PositionIndex::default()
            },
        })
        .collect())
}

/// Why an unknown key is refused, or that it is an output-only field to skip.
pub(crate) enum Refusal {
    OutputOnly,
    NotSupported(&'static str),
    NotAllowed(&'static str),
}

pub(crate) const OUTPUT_ONLY_META: &[&str] = &[
    "uid",
    "generation",
    "creationTimestamp",
    "selfLink",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

const POD_FEATURE_FLAGGED: &[&str] = &[
    "affinity",
    "nodeSelector",
    "tolerations",
    "topologySpreadConstraints",
    "schedulerName",
    "priorityClassName",
    "runtimeClassName",
    "hostAliases",
    "dnsPolicy",
    "dnsConfig",
    "securityContext",
    "initContainers",
    "shareProcessNamespace",
    "hostIPC",
    "hostPID",
    "hostNetwork",
    "hostUsers",
    "persistentVolumeClaim",
];

const POD_NOT_ALLOWED: &[&str] = &[
    "nodeName",
    "restartPolicy",
    "activeDeadlineSeconds",
    "terminationGracePeriodSeconds",
    "ephemeralContainers",
    "readinessGates",
    "hostname",
    "subdomain",
    "setHostnameAsFQDN",
    "priority",
    "preemptionPolicy",
    "overhead",
    "os",
    "schedulingGates",
    "resourceClaims",
    "serviceAccount",
    "imagePullPolicy",
];

const VOLUME_TYPES_NOT_ALLOWED: &[&str] = &[
    "hostPath",
    "nfs",
    "csi",
    "ephemeral",
    "downwardAPI",
    "gitRepo",
    "awsElasticBlockStore",
    "gcePersistentDisk",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "fc",
    "flexVolume",
    "flocker",
    "glusterfs",
    "iscsi",
    "photonPersistentDisk",
    "portworxVolume",
    "quobyte",
    "rbd",
    "scaleIO",
    "storageos",
    "vsphereVolume",
    "image",
];

fn is_probe(pattern: &str) -> bool {
    pattern.ends_with("readinessProbe")
        || pattern.ends_with("livenessProbe")
        || pattern.ends_with("startupProbe")
}

fn classify(parent: &str, key: &str) -> Option<Refusal> {
    use Refusal::*;
    const CONTAINER: &str = "spec.template.spec.containers[]";
    Some(match (parent, key) {
        ("", "status") => OutputOnly,
        ("metadata" | "spec.template.metadata", k) if OUTPUT_ONLY_META.contains(&k) => OutputOnly,
        ("metadata", "ownerReferences" | "finalizers") => {
            NotSupported("owner references and finalizers")
        }
        ("spec.template.metadata", _) => {
            NotAllowed("only name, labels and annotations may be set on the revision template")
        }
        ("spec", "runLatest" | "release" | "pinned" | "manual") => {
            NotAllowed("this is a v1alpha1 field; write the Service in serving.knative.dev/v1 form")
        }
        ("spec.template.spec", "serviceAccountName" | "automountServiceAccountToken") => {
            NotSupported("service accounts")
        }
        ("spec.template.spec", k) if POD_FEATURE_FLAGGED.contains(&k) => NotSupported(
            "a Kubernetes scheduling or pod setting Knative gates behind a feature flag",
        ),
        ("spec.template.spec", k) if POD_NOT_ALLOWED.contains(&k) => {
            NotAllowed("Knative does not allow this field in a revision")
        }
        (CONTAINER, "terminationMessagePath" | "terminationMessagePolicy") => {
            NotSupported("termination messages")
        }
        (CONTAINER, "lifecycle") => NotAllowed("Knative does not allow lifecycle hooks"),
        (CONTAINER, "stdin" | "stdinOnce" | "tty") => {
            NotAllowed("Knative does not allow stdin or a TTY on a serving container")
        }
        (CONTAINER, "volumeDevices" | "resizePolicy" | "restartPolicy") => {
            NotAllowed("Knative does not allow this container field")
        }
        ("spec.template.spec.containers[].ports[]", "hostPort" | "hostIP") => NotAllowed(
            "instances are reached only through skiff's router; host ports are not allowed",
        ),
        ("spec.template.spec.containers[].resources", "claims") => {
            NotAllowed("Knative does not allow resource claims")
        }
        ("spec.template.spec.containers[].securityContext", "privileged") => {
            NotAllowed("Knative does not allow privileged containers")
        }
        (
            "spec.template.spec.containers[].securityContext",
            "procMount" | "seLinuxOptions" | "windowsOptions" | "appArmorProfile",
        ) => NotSupported("this security setting"),
        ("spec.template.spec.containers[].volumeMounts[]", "mountPropagation") => {
            NotAllowed("Knative does not allow mount propagation")
        }
        ("spec.template.spec.containers[].volumeMounts[]", "subPathExpr" | "recursiveReadOnly") => {
            NotSupported("this volume mount setting")
        }
        (p, "terminationGracePeriodSeconds") if is_probe(p) => {
            NotAllowed("Knative does not allow a probe-level grace period")
        }
        (p, "host") if p.ends_with(".httpGet") || p.ends_with(".tcpSocket") => {
            NotSupported("probing another host; probes go to the instance itself")
        }
        (
            "spec.template.spec.volumes[].projected.sources[]",
            "downwardAPI" | "serviceAccountToken" | "clusterTrustBundle" | "podCertificate",
        ) => NotSupported("this projected volume source; secret and configMap are supported"),
        ("spec.template.spec.volumes[]", "persistentVolumeClaim") => {
            NotSupported("persistent volume claims")
        }
        ("spec.template.spec.volumes[]", k) if VOLUME_TYPES_NOT_ALLOWED.contains(&k) => {
            NotAllowed("Knative does not allow this volume type")
        }
        ("spec.traffic[]", "url") => NotAllowed("`url` is set by skiff in status.traffic"),
        _ => return None,
    })
}

/// The accepted field names of the struct found at `pattern`.
fn accepted_fields(pattern: &str) -> &'static [&'static str] {
    let probe = |p: &str| is_probe(p);
    match pattern {
        "" => fields::of::<ServiceManifest>(),
        "metadata" => fields::of::<ManifestMeta>(),
        "spec" => fields::of::<ServiceSpec>(),
        "spec.template" => fields::of::<RevisionTemplate>(),
        "spec.template.metadata" => fields::of::<TemplateMeta>(),
        "spec.template.spec" => fields::of::<RevisionSpec>(),
        "spec.template.spec.containers[]" => fields::of::<Container>(),
        "spec.template.spec.containers[].env[]" => fields::of::<EnvVar>(),
        "spec.template.spec.containers[].env[].valueFrom" => fields::of::<EnvVarSource>(),
        "spec.template.spec.containers[].env[].valueFrom.fieldRef" => {
            fields::of::<ObjectFieldSelector>()
        }
        "spec.template.spec.containers[].env[].valueFrom.resourceFieldRef" => {
            fields::of::<ResourceFieldSelector>()
        }
        "spec.template.spec.containers[].env[].valueFrom.secretKeyRef"
        | "spec.template.spec.containers[].env[].valueFrom.configMapKeyRef" => {
            fields::of::<KeySelector>()
        }
        "spec.template.spec.containers[].envFrom[]" => fields::of::<EnvFromSource>(),
        "spec.template.spec.containers[].ports[]" => fields::of::<ContainerPort>(),
        "spec.template.spec.containers[].resources" => fields::of::<ResourceRequirements>(),
        "spec.template.spec.containers[].securityContext" => fields::of::<SecurityContext>(),
        "spec.template.spec.containers[].securityContext.capabilities" => {
            fields::of::<Capabilities>()
        }
        "spec.template.spec.containers[].volumeMounts[]" => fields::of::<VolumeMount>(),
        "spec.template.spec.volumes[]" => fields::of::<Volume>(),
        "spec.template.spec.volumes[].emptyDir" => fields::of::<EmptyDirVolumeSource>(),
        "spec.template.spec.volumes[].secret" => fields::of::<SecretVolumeSource>(),
        "spec.template.spec.volumes[].configMap" => fields::of::<ConfigMapVolumeSource>(),
        "spec.template.spec.volumes[].projected" => fields::of::<ProjectedVolumeSource>(),
        "spec.template.spec.volumes[].projected.sources[]" => fields::of::<VolumeProjection>(),
        "spec.template.spec.volumes[].projected.sources[].secret"
        | "spec.template.spec.volumes[].projected.sources[].configMap" => {
            fields::of::<ObjectProjection>()
        }
        p if p.ends_with(".items[]") && p.starts_with("spec.template.spec.volumes[]") => {
            fields::of::<KeyToPath>()
        }
        "spec.template.spec.imagePullSecrets[]" => fields::of::<LocalObjectReference>(),
        "spec.traffic[]" => fields::of::<TrafficTarget>(),
        p if probe(p) => fields::of::<Probe>(),
        p if p.ends_with(".httpGet") => fields::of::<HttpGetAction>(),
        p if p.ends_with(".httpGet.httpHeaders[]") => fields::of::<HttpHeader>(),
        p if p.ends_with(".tcpSocket") => fields::of::<TcpSocketAction>(),
        p if p.ends_with(".exec") => fields::of::<ExecAction>(),
        p if p.ends_with(".grpc") => fields::of::<GrpcAction>(),
        _ => &[],
    }
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> FieldPath {
    fn walk(path: &serde_ignored::Path<'_>, out: &mut Vec<Segment>) {
        match path {
            serde_ignored::Path::Root => {}
            serde_ignored::Path::Seq { parent, index } => {
                walk(parent, out);
                out.push(Segment::Index(*index));
            }
            serde_ignored::Path::Map { parent, key } => {
                walk(parent, out);
                out.push(Segment::Key(key.clone()));
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => walk(parent, out),
        }
    }
    let mut segments = Vec::new();
    walk(path, &mut segments);
    FieldPath::from(segments)
}

fn error_path(path: &serde_path_to_error::Path) -> FieldPath {
    let segments = path
        .iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Segment::Key(variant.clone())),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect::<Vec<_>>();
    FieldPath::from(segments)
}

/// Rewrites serde's "invalid type: string \"x\", expected i64" for people.
fn type_error_message(raw: &str) -> String {
    let friendly = |expected: &str| -> String {
        let e = expected.trim();
        match e {
            "i64" | "u64" | "i32" | "u32" => "a whole number".into(),
            "a boolean" | "bool" => "true or false".into(),
            "a string" => "a string (quote it)".into(),
            "a sequence" => "a list".into(),
            "a map" => "a mapping".into(),
            e if e.starts_with("struct ") => "a mapping".into(),
            e => e.to_owned(),
        }
    };
    if let Some(rest) = raw.strip_prefix("invalid type: ")
        && let Some((got, expected)) = rest.split_once(", expected ")
    {
        let got = got.replace("sequence", "list").replace("map", "mapping");
        return format!("must be {} (found {got})", friendly(expected));
    }
    if let Some(rest) = raw.strip_prefix("invalid value: ")
        && let Some((got, expected)) = rest.split_once(", expected ")
    {
        return format!("must be {} (found {got})", friendly(expected));
    }
    raw.to_owned()
}

/// Reads a typed value from `value`, reporting unknown fields (all of them) and the first type
/// error, each at its path.
fn typed<T: for<'de> Deserialize<'de>>(value: &Value, problems: &mut Problems) -> Option<T> {
    typed_as(value, problems, classify, accepted_fields)
}

/// [`typed`] for any kind of object, with its own refusals and field lists.
pub(crate) fn typed_as<T: for<'de> Deserialize<'de>>(
    value: &Value,
    problems: &mut Problems,
    classify: fn(&str, &str) -> Option<Refusal>,
    accepted_fields: fn(&str) -> &'static [&'static str],
) -> Option<T> {
    let mut ignored: Vec<FieldPath> = Vec::new();
    let result = {
        let mut record = |path: serde_ignored::Path<'_>| ignored.push(ignored_path(&path));
        let de = serde_ignored::Deserializer::new(value, &mut record);
        serde_path_to_error::deserialize::<_, T>(de)
    };
    for path in ignored {
        let parent = path.parent().pattern();
        let key = path.last_key().unwrap_or_default().to_owned();
        match classify(&parent, &key) {
            Some(Refusal::OutputOnly) => {}
            Some(Refusal::NotSupported(what)) => problems.not_supported(&path, what),
            Some(Refusal::NotAllowed(why)) => problems.push(
                &path,
                ProblemKind::NotAllowed,
                format!("not allowed: {why}"),
            ),
            None => {
                let hint = suggest::closest(&key, accepted_fields(&parent).iter().copied())
                    .map(|f| format!("; did you mean `{f}`?"))
                    .unwrap_or_default();
                problems.push(
                    &path,
                    ProblemKind::UnknownField,
                    format!("unknown field{hint}"),
                );
            }
        }
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            let path = error_path(e.path());
            problems.invalid(&path, type_error_message(&e.inner().to_string()));
            None
        }
    }
}

/// Why an unknown key of a Secret or ConfigMap is refused.
fn classify_config(parent: &str, key: &str) -> Option<Refusal> {
    Some(match (parent, key) {
        ("metadata", k) if OUTPUT_ONLY_META.contains(&k) => Refusal::OutputOnly,
        ("metadata", "ownerReferences" | "finalizers") => {
            Refusal::NotSupported("owner references and finalizers")
        }
        _ => return None,
    })
}

fn secret_fields(pattern: &str) -> &'static [&'static str] {
    match pattern {
        "" => fields::of::<SecretManifest>(),
        "metadata" => fields::of::<ConfigMeta>(),
        _ => &[],
    }
}

fn config_map_fields(pattern: &str) -> &'static [&'static str] {
    match pattern {
        "" => fields::of::<ConfigMapManifest>(),
        "metadata" => fields::of::<ConfigMeta>(),
        _ => &[],
    }
}

/// Reads and validates one document as a Secret or ConfigMap.
pub fn config_from_document(doc: &Document, kind: ConfigKind) -> Result<ValidatedConfig, Problems> {
    let mut problems = Problems::new();
    if !doc.value.is_object() {
        problems.invalid(
            &FieldPath::root(),
            "a manifest must be a mapping with apiVersion, kind and metadata",
        );
        return Err(problems);
    }
    let valid = match kind {
        ConfigKind::Secret => {
            let m: Option<SecretManifest> =
                typed_as(&doc.value, &mut problems, classify_config, secret_fields);
            m.and_then(|m| config::validate_secret(m, &mut problems))
        }
        ConfigKind::ConfigMap => {
            let m: Option<ConfigMapManifest> = typed_as(
                &doc.value,
                &mut problems,
                classify_config,
                config_map_fields,
            );
            m.and_then(|m| config::validate_config_map(m, &mut problems))
        }
    };
    match valid {
        Some(v) if problems.is_empty() => Ok(v),
        _ => Err(problems),
    }
}

/// The kind of configuration object a document is, by its `apiVersion` and `kind`; `None`
/// for anything else (read as a Service, which then says what is wrong).
pub fn config_kind(doc: &Document) -> Option<ConfigKind> {
    let core = matches!(
        doc.value.get("apiVersion").and_then(Value::as_str),
        Some(CORE_API_VERSION) | None
    );
    match doc.kind() {
        Some("Secret") if core => Some(ConfigKind::Secret),
        Some("ConfigMap") if core => Some(ConfigKind::ConfigMap),
        _ => None,
    }
}

/// The path of a job's task template, and the revision template's it mirrors.
const TASK_SPEC: &str = "spec.template.spec.template.spec";
const REVISION_SPEC: &str = "spec.template.spec";

/// A job's pattern under its task template, as the revision template's pattern (the
/// containers and volumes are the same types).
fn as_revision_pattern(pattern: &str) -> Option<String> {
    pattern
        .strip_prefix(TASK_SPEC)
        .map(|rest| format!("{REVISION_SPEC}{rest}"))
}

/// Why an unknown key of a Job is refused.
fn classify_job(parent: &str, key: &str) -> Option<Refusal> {
    use Refusal::*;
    match (parent, key) {
        ("", "status") => return Some(OutputOnly),
        ("metadata", k) if OUTPUT_ONLY_META.contains(&k) => return Some(OutputOnly),
        ("metadata", "ownerReferences" | "finalizers") => {
            return Some(NotSupported("owner references and finalizers"));
        }
        ("spec.template.metadata", "name" | "generateName" | "namespace") => {
            return Some(NotAllowed(
                "executions are named by skiff (`<job>-<suffix>`)",
            ));
        }
        (TASK_SPEC, "serviceAccountName") => return Some(NotSupported("service accounts")),
        (TASK_SPEC, "nodeSelector") => {
            return Some(NotSupported("Cloud Run's execution environment settings"));
        }
        _ => {}
    }
    classify(&as_revision_pattern(parent)?, key)
}

fn job_fields(pattern: &str) -> &'static [&'static str] {
    match pattern {
        "" => fields::of::<JobManifest>(),
        "metadata" => fields::of::<ManifestMeta>(),
        "spec" => fields::of::<JobSpec>(),
        "spec.template" => fields::of::<ExecutionTemplate>(),
        "spec.template.metadata" => fields::of::<TemplateLabels>(),
        "spec.template.spec" => fields::of::<ExecutionSpec>(),
        "spec.template.spec.template" => fields::of::<TaskTemplate>(),
        TASK_SPEC => fields::of::<TaskSpec>(),
        p => as_revision_pattern(p).map_or(&[], |p| accepted_fields(&p)),
    }
}

/// Reads and validates one document as a Cloud Run Job.
pub fn job_from_document(doc: &Document) -> Result<ValidatedJob, Problems> {
    let mut problems = Problems::new();
    if !doc.value.is_object() {
        problems.invalid(
            &FieldPath::root(),
            "a manifest must be a mapping with apiVersion, kind, metadata and spec",
        );
        return Err(problems);
    }
    let m: Option<JobManifest> = typed_as(&doc.value, &mut problems, classify_job, job_fields);
    match m.and_then(|m| job::validate_job(m, &mut problems)) {
        Some(v) if problems.is_empty() => Ok(v),
        _ => Err(problems),
    }
}

/// Whether a document is a Cloud Run Job (by `kind`, with a `run.googleapis.com` apiVersion
/// or none: a wrong version is then named by validation).
pub fn is_job(doc: &Document) -> bool {
    doc.kind() == Some("Job")
        && doc
            .value
            .get("apiVersion")
            .and_then(Value::as_str)
            .is_none_or(|v| v.starts_with("run.googleapis.com/"))
}

/// One object of an input: a Service, a Secret or ConfigMap, a Job, or an eventing object.
#[derive(Debug)]
pub enum Object {
    /// A Knative Service.
    Service(Box<ValidatedService>),
    /// A Secret or ConfigMap.
    Config(ValidatedConfig),
    /// A Cloud Run Job.
    Job(Box<ValidatedJob>),
    /// A `sources.knative.dev/v1` PingSource.
    PingSource(Box<eventing::ValidatedPingSource>),
    /// An `eventing.knative.dev/v1` Broker.
    Broker(Box<eventing::ValidatedBroker>),
    /// An `eventing.knative.dev/v1` Trigger.
    Trigger(Box<eventing::ValidatedTrigger>),
}

impl Object {
    /// The object's `kind`: `Service`, `Secret`, `ConfigMap`, `PingSource`, ….
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Service(_) => "Service",
            Object::Config(c) => c.kind.as_str(),
            Object::Job(_) => "Job",
            Object::PingSource(_) => "PingSource",
            Object::Broker(_) => "Broker",
            Object::Trigger(_) => "Trigger",
        }
    }

    /// The object's name (a Service may have only `generateName`).
    pub fn name(&self) -> Option<&str> {
        match self {
            Object::Service(s) => s.name(),
            Object::Config(c) => Some(&c.name),
            Object::Job(j) => Some(&j.name),
            Object::PingSource(o) => Some(&o.meta.name),
            Object::Broker(o) => Some(&o.meta.name),
            Object::Trigger(o) => Some(&o.meta.name),
        }
    }

    /// The namespace the manifest names, if it names one.
    pub fn manifest_namespace(&self) -> Option<&str> {
        match self {
            Object::Service(s) => s.manifest.metadata.namespace.as_deref(),
            Object::Config(c) => c.manifest_namespace.as_deref(),
            Object::Job(j) => j.manifest.metadata.namespace.as_deref(),
            Object::PingSource(o) => o.meta.manifest_namespace.as_deref(),
            Object::Broker(o) => o.meta.manifest_namespace.as_deref(),
            Object::Trigger(o) => o.meta.manifest_namespace.as_deref(),
        }
    }

    /// Warnings to show on applying.
    pub fn warnings(&self) -> Vec<String> {
        match self {
            Object::Service(s) => s.warnings(),
            Object::Config(_) | Object::Job(_) | Object::PingSource(_) => Vec::new(),
            Object::Broker(o) => o.warnings(),
            Object::Trigger(o) => o.warnings(),
        }
    }
}

/// Every document of an input with what it held: its object or its problems.
#[derive(Debug)]
pub struct Parsed<T> {
    /// Each non-empty document and what it held.
    pub documents: Vec<(Document, Result<T, Vec<Problem>>)>,
}

impl<T> Parsed<T> {
    /// Every problem of every document, in order.
    pub fn problems(&self) -> Vec<Problem> {
        self.documents
            .iter()
            .filter_map(|(_, r)| r.as_ref().err())
            .flatten()
            .cloned()
            .collect()
    }
}

/// Every document of an input read as a Service, Secret, ConfigMap or eventing object.
pub type ParsedObjects = Parsed<Object>;

/// Every document of an input read as a Service.
pub type ParsedInput = Parsed<ValidatedService>;

/// Reads every document of a YAML or JSON input with `read`. A syntax error refuses the
/// whole input; otherwise each document carries its own result, its problems placed (with
/// the document's number when there are several).
fn parse_each<T>(
    text: &str,
    read: impl Fn(&Document) -> Result<T, Problems>,
) -> Result<Parsed<T>, Problem> {
    let docs = parse_documents(text)?;
    if docs.is_empty() {
        return Err(syntax_problem(
            "the input holds no document".into(),
            None,
            None,
        ));
    }
    let multi = docs.len() > 1;
    let documents = docs
        .into_iter()
        .map(|doc| {
            let result = read(&doc).map_err(|p| doc.place(p, multi));
            (doc, result)
        })
        .collect();
    Ok(Parsed { documents })
}

/// Reads every document of a YAML or JSON input as a Service, Secret, ConfigMap, PingSource,
/// Broker or Trigger (by its `kind`). A syntax error refuses the whole input; otherwise each
/// document carries its own result.
pub fn parse_objects(text: &str) -> Result<ParsedObjects, Problem> {
    parse_each(text, |doc| {
        if let Some(kind) = eventing::EventingKind::of(doc) {
            return eventing::object_from_document(doc, kind);
        }
        match config_kind(doc) {
            Some(kind) => config_from_document(doc, kind).map(Object::Config),
            None if is_job(doc) => job_from_document(doc).map(|j| Object::Job(Box::new(j))),
            None => service_from_document(doc).map(|s| Object::Service(Box::new(s))),
        }
    })
}

/// Reads and validates one document as a Service.
pub fn service_from_document(doc: &Document) -> Result<ValidatedService, Problems> {
    let mut problems = Problems::new();
    if !doc.value.is_object() {
        problems.invalid(
            &FieldPath::root(),
            "a manifest must be a mapping with apiVersion, kind, metadata and spec",
        );
        return Err(problems);
    }
    let manifest: Option<ServiceManifest> = typed(&doc.value, &mut problems);
    let Some(manifest) = manifest else {
        return Err(problems);
    };
    match validate::validate_service(manifest, &mut problems) {
        Some(valid) if problems.is_empty() => Ok(valid),
        _ => Err(problems),
    }
}

/// Reads every document of a YAML or JSON input as a Service. A syntax error refuses the
/// whole input; otherwise each document carries its own result.
pub fn parse_services(text: &str) -> Result<ParsedInput, Problem> {
    parse_each(text, service_from_document)
}
