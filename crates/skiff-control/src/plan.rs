//! Turning a Revision and its pinned images into an [`InstancePlan`] for the runtime:
//! Kubernetes' command/args rules, the runtime contract's environment (`PORT`, `K_SERVICE`,
//! `K_CONFIGURATION`, `K_REVISION`), resolved `valueFrom` references, limits, probes and
//! volumes.

use std::collections::HashMap;
use std::time::Duration;

use skiff_api::config::{ConfigKind, Data};

use skiff_api::object::{LABEL_CONFIGURATION, Revision};
use skiff_api::quantity::Quantity;
use skiff_api::types::{
    Container, EnvVar, IntOrString, KeySelector, Probe, RevisionSpec, SecurityContext, Volume,
};
use skiff_image::ImageRecord;
use skiff_image::content::RunConfig;
use skiff_runtime::instance::{
    ContainerPlan, InstancePlan, MountPlan, SecretEnv, UserPlan, VolumeFile, VolumeFiles,
    VolumePlan,
};
use skiff_runtime::probe::{ProbeAction, ProbeSpec};
use skiff_runtime::spec::{CPU_PERIOD_US, capabilities};

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The revision cannot run as it is.
    #[error("{0}")]
    Invalid(String),
    /// A Secret, ConfigMap or key it needs is missing (Kubernetes'
    /// `CreateContainerConfigError`). The message names them, never a value.
    #[error("{0}")]
    Config(String),
}

/// The values of the Secrets and ConfigMaps a revision references, read for one instance
/// start and dropped after it. An absent object is simply not here.
#[derive(Debug, Default, Clone)]
pub struct ConfigValues {
    objects: HashMap<(ConfigKind, String), Data>,
}

impl ConfigValues {
    /// Adds an object's values.
    pub fn insert(&mut self, kind: ConfigKind, name: String, data: Data) {
        self.objects.insert((kind, name), data);
    }

    fn get(&self, kind: ConfigKind, name: &str) -> Option<&Data> {
        self.objects.get(&(kind, name.to_owned()))
    }
}

fn quantity(c: &Container, kind: &str, res: &str) -> Option<Quantity> {
    let r = c.resources.as_ref()?;
    let map = if kind == "limits" {
        &r.limits
    } else {
        &r.requests
    };
    map.get(res).and_then(|q| Quantity::parse(&q.0).ok())
}

fn field_value(path: &str, revision: &Revision, instance: &str) -> String {
    match path {
        "metadata.name" => instance.to_owned(),
        "metadata.namespace" => revision.metadata.namespace.clone(),
        "metadata.uid" => revision.metadata.uid.clone(),
        p => {
            let key = |prefix: &str| {
                p.strip_prefix(prefix)
                    .and_then(|r| r.strip_suffix("']"))
                    .map(str::to_owned)
            };
            if let Some(k) = key("metadata.labels['") {
                revision
                    .metadata
                    .labels
                    .get(&k)
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(k) = key("metadata.annotations['") {
                revision
                    .metadata
                    .annotations
                    .get(&k)
                    .cloned()
                    .unwrap_or_default()
            } else {
                String::new()
            }
        }
    }
}

fn resource_value(
    revision: &Revision,
    own: &Container,
    r: &skiff_api::types::ResourceFieldSelector,
) -> String {
    let c = r
        .container_name
        .as_ref()
        .and_then(|n| {
            revision
                .spec
                .containers
                .iter()
                .find(|c| c.name.as_deref() == Some(n))
        })
        .unwrap_or(own);
    let res = r.resource.as_deref().unwrap_or_default();
    let (kind, name) = res.split_once('.').unwrap_or(("limits", "cpu"));
    let divisor = r.divisor.as_ref().and_then(|d| Quantity::parse(&d.0).ok());
    match (name, quantity(c, kind, name)) {
        ("cpu", Some(q)) => {
            let div = divisor.map_or(1000, |d| d.as_millis().max(1));
            q.as_millis().div_ceil(div).to_string()
        }
        ("memory", Some(q)) => {
            let div = divisor.map_or(1, |d| d.as_units().max(1));
            q.as_units().div_ceil(div).to_string()
        }
        // Kubernetes reports the node's capacity for unset limits; an instance may use all of
        // the machine's CPUs and memory.
        ("cpu", None) => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .to_string(),
        (_, None) => {
            let mem = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| {
                    m.lines()
                        .find(|l| l.starts_with("MemTotal:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                })
                .unwrap_or(0)
                * 1024;
            let div = divisor.map_or(1, |d| d.as_units().max(1));
            mem.div_ceil(div).to_string()
        }
        _ => String::new(),
    }
}

fn probe(p: &Probe, port: u16, default_period: u64) -> ProbeSpec {
    let port_of = |ios: &Option<IntOrString>| match ios {
        Some(IntOrString::Int(n)) => u16::try_from(*n).unwrap_or(port),
        _ => port,
    };
    let action = if let Some(h) = &p.http_get {
        ProbeAction::Http {
            port: port_of(&h.port),
            path: h.path.clone().unwrap_or_else(|| "/".into()),
            headers: h
                .http_headers
                .iter()
                .filter_map(|x| Some((x.name.clone()?, x.value.clone().unwrap_or_default())))
                .collect(),
        }
    } else if let Some(e) = &p.exec {
        ProbeAction::Exec {
            command: e.command.clone(),
        }
    } else if let Some(t) = &p.tcp_socket {
        ProbeAction::Tcp {
            port: port_of(&t.port),
        }
    } else {
        ProbeAction::Tcp { port }
    };
    let secs = |v: Option<i64>, d: u64| Duration::from_secs(v.map_or(d, |v| v.max(0) as u64));
    ProbeSpec {
        action,
        initial_delay: secs(p.initial_delay_seconds, 0),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_millis(100)),
        period: secs(p.period_seconds, default_period),
        success_threshold: p.success_threshold.map_or(1, |v| v.max(1) as u32),
        failure_threshold: p.failure_threshold.map_or(3, |v| v.max(1) as u32),
    }
}

/// What every container of one instance shares.
struct InstanceContext<'a> {
    /// The revision the instance runs.
    revision: &'a Revision,
    /// The instance's id (its `metadata.name` for the downward API).
    id: &'a str,
    /// The index of the serving container.
    serving: usize,
    /// The port the serving container listens on.
    port: u16,
    /// The Service's name (`K_SERVICE`).
    service: &'a str,
    /// The Configuration's name (`K_CONFIGURATION`).
    configuration: &'a str,
    /// The Secrets and ConfigMaps it references.
    values: &'a ConfigValues,
}

/// The plan of a new instance `id` of `revision`, whose containers run `images` (in the
/// order of its containers).
pub fn plan(
    revision: &Revision,
    images: &[ImageRecord],
    layer_dir: impl Fn(&str) -> std::path::PathBuf,
    id: &str,
    values: &ConfigValues,
) -> Result<InstancePlan, PlanError> {
    let spec = &revision.spec;
    let missing = missing_config(spec, values);
    if !missing.is_empty() {
        return Err(PlanError::Config(missing.join("; ")));
    }
    let (serving, port) = skiff_api::validate::serving_port(spec);
    let service = revision.service_name().unwrap_or_default().to_owned();
    let configuration = revision
        .metadata
        .labels
        .get(LABEL_CONFIGURATION)
        .cloned()
        .unwrap_or_else(|| service.clone());
    let ctx = InstanceContext {
        revision,
        id,
        serving,
        port,
        service: &service,
        configuration: &configuration,
        values,
    };
    let mut containers = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let image = images
            .get(i)
            .ok_or_else(|| PlanError::Invalid(format!("no pinned image for container {i}")))?;
        containers.push(container_plan(&ctx, i, c, image, &layer_dir)?);
    }
    Ok(InstancePlan {
        id: id.to_owned(),
        namespace: revision.metadata.namespace.clone(),
        service,
        revision: revision.metadata.name.clone(),
        containers,
        serving,
        port,
        volumes: volume_plans(
            &spec.volumes,
            spec.containers
                .get(serving)
                .map_or(DEFAULT_SCRATCH_BYTES, scratch_bytes),
            values,
        ),
        // Knative gives an instance its request timeout to finish in-flight work.
        // Retiring waits for requests in flight up to the request timeout, as Knative does;
        // SIGTERM to SIGKILL is the daemon's termination grace, not this.
        drain_timeout: Duration::from_secs(
            spec.timeout_seconds.unwrap_or(300).clamp(1, 3600) as u64
        ),
        egress: revision
            .metadata
            .annotations
            .get(skiff_api::egress::EGRESS_ANNOTATION)
            .cloned(),
        scheduled: None,
        task: None,
    })
}

/// The plan of container `i`, `c`, running `image`.
fn container_plan(
    ctx: &InstanceContext<'_>,
    i: usize,
    c: &Container,
    image: &ImageRecord,
    layer_dir: &impl Fn(&str) -> std::path::PathBuf,
) -> Result<ContainerPlan, PlanError> {
    let cfg = &image.config;
    let args = command(c, cfg)?;
    let (env, secret_env) = environment(ctx, c, cfg)?;
    let sc = c.security_context.clone().unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    let memory_limit = quantity(c, "limits", "memory").map(|q| q.as_units() as i64);
    let memory_request = quantity(c, "requests", "memory").map(|q| q.as_units() as i64);
    let scratch_limit = Some(scratch_bytes(c));
    let cpu_quota = quantity(c, "limits", "cpu")
        .map(|q| (q.as_millis() * CPU_PERIOD_US / 1000).max(1000) as i64);
    let cpu_shares = quantity(c, "requests", "cpu")
        .or_else(|| quantity(c, "limits", "cpu"))
        .map(|q| (q.as_millis() * 1024 / 1000).max(2));
    let port = ctx.port;
    Ok(ContainerPlan {
        name: c.name.clone().unwrap_or_else(|| format!("container-{i}")),
        lowers: image
            .layers
            .iter()
            .rev()
            .map(|l| layer_dir(&l.diff_id))
            .collect(),
        args,
        env,
        secret_env,
        working_dir: c
            .working_dir
            .clone()
            .or_else(|| cfg.working_dir.clone().filter(|w| !w.is_empty())),
        user: user_plan(&sc, cfg),
        read_only_rootfs: sc.read_only_root_filesystem == Some(true),
        capabilities: capabilities(&caps.add, &caps.drop),
        seccomp: sc
            .seccomp_profile
            .as_ref()
            .and_then(|p| p.profile_type.as_deref())
            != Some("Unconfined"),
        memory_limit,
        memory_request,
        scratch_limit,
        cpu_quota,
        cpu_shares,
        mounts: mount_plans(c),
        readiness: readiness(c, port, i == ctx.serving),
        liveness: c.liveness_probe.as_ref().map(|p| probe(p, port, 10)),
        startup: c.startup_probe.as_ref().map(|p| probe(p, port, 10)),
    })
}

/// What a container runs. Kubernetes: `command` replaces the Entrypoint (and drops the Cmd);
/// `args` replace the Cmd.
fn command(c: &Container, cfg: &RunConfig) -> Result<Vec<String>, PlanError> {
    let mut args: Vec<String> = if c.command.is_empty() {
        cfg.entrypoint.clone().unwrap_or_default()
    } else {
        c.command.clone()
    };
    if !c.args.is_empty() {
        args.extend(c.args.iter().cloned());
    } else if c.command.is_empty() {
        args.extend(cfg.cmd.clone().unwrap_or_default());
    }
    if args.is_empty() {
        return Err(PlanError::Invalid(format!(
            "container `{}` has no command: the image sets no Entrypoint or Cmd, and the manifest no command",
            c.name.as_deref().unwrap_or_default()
        )));
    }
    Ok(args)
}

/// A container's environment: the image's, then the runtime contract's variables, then
/// `envFrom` in order, then the manifest's `env` (each replacing an earlier one of the same
/// name). Returns the variables that may be recorded and, apart, those whose values come
/// from Secrets (never recorded in the store).
fn environment(
    ctx: &InstanceContext<'_>,
    c: &Container,
    cfg: &RunConfig,
) -> Result<(Vec<(String, String)>, SecretEnv), PlanError> {
    // (name, value, from a Secret)
    let mut env: Vec<(String, String, bool)> = cfg
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned(), false))
        })
        .collect();
    let mut set = |k: &str, v: String, secret: bool| {
        env.retain(|(n, _, _)| n != k);
        env.push((k.to_owned(), v, secret));
    };
    set("PORT", ctx.port.to_string(), false);
    set("K_SERVICE", ctx.service.to_owned(), false);
    set("K_CONFIGURATION", ctx.configuration.to_owned(), false);
    set("K_REVISION", ctx.revision.metadata.name.clone(), false);
    for from in &c.env_from {
        let (kind, r) = match (&from.secret_ref, &from.config_map_ref) {
            (Some(r), _) => (ConfigKind::Secret, r),
            (None, Some(r)) => (ConfigKind::ConfigMap, r),
            (None, None) => continue,
        };
        // Absent and optional (a required one was refused by `missing_config`).
        let Some(data) = ctx.values.get(kind, r.name.as_deref().unwrap_or_default()) else {
            continue;
        };
        let prefix = from.prefix.as_deref().unwrap_or_default();
        for (k, v) in &data.0 {
            let var = format!("{prefix}{k}");
            // Kubernetes skips keys that are not valid variable names; so does skiff. Values
            // that are not text or hold a NUL cannot be passed either.
            if skiff_api::names::check_env_name(&var).is_err()
                || skiff_api::validate::RESERVED_ENV.contains(&var.as_str())
            {
                continue;
            }
            if let Some(text) = env_text(v) {
                set(&var, text, kind == ConfigKind::Secret);
            }
        }
    }
    for e in &c.env {
        let Some(name) = &e.name else { continue };
        match key_selector(e) {
            Some((kind, sel)) => {
                let value = ctx
                    .values
                    .get(kind, sel.name.as_deref().unwrap_or_default())
                    .and_then(|d| d.0.get(sel.key.as_deref().unwrap_or_default()))
                    .and_then(|v| env_text(v));
                // Absent and optional: the variable is not set, as in Kubernetes.
                if let Some(text) = value {
                    set(name, text, kind == ConfigKind::Secret);
                }
            }
            None => set(name, env_value(ctx, c, e), false),
        }
    }
    let (secret, plain): (Vec<_>, Vec<_>) = env.into_iter().partition(|(_, _, s)| *s);
    let strip = |v: Vec<(String, String, bool)>| v.into_iter().map(|(k, v, _)| (k, v)).collect();
    Ok((strip(plain), SecretEnv(strip(secret))))
}

/// The Secret or ConfigMap key an env entry takes its value from.
fn key_selector(e: &EnvVar) -> Option<(ConfigKind, &KeySelector)> {
    let f = e.value_from.as_ref()?;
    f.secret_key_ref
        .as_ref()
        .map(|s| (ConfigKind::Secret, s))
        .or(f
            .config_map_key_ref
            .as_ref()
            .map(|s| (ConfigKind::ConfigMap, s)))
}

/// What a revision needs from Secrets and ConfigMaps that `values` lacks (objects and keys
/// not marked optional, and values that cannot be environment variables), one phrase each,
/// naming the object and key and never a value. Empty when every container can start.
pub fn missing_config(spec: &RevisionSpec, values: &ConfigValues) -> Vec<String> {
    let mut missing = Vec::new();
    for v in &spec.volumes {
        let volume = v.name.as_deref().unwrap_or_default();
        for (is_secret, name, items, optional) in v.config_sources() {
            let kind = if is_secret {
                ConfigKind::Secret
            } else {
                ConfigKind::ConfigMap
            };
            let obj = name.unwrap_or_default();
            let Some(data) = values.get(kind, obj) else {
                if !optional {
                    missing.push(format!("{kind} `{obj}` not found (volume `{volume}`)"));
                }
                continue;
            };
            for it in items {
                let key = it.key.as_deref().unwrap_or_default();
                if !optional && !data.0.contains_key(key) {
                    missing.push(format!(
                        "key `{key}` not found in {kind} `{obj}` (volume `{volume}`)"
                    ));
                }
            }
        }
    }
    for (i, c) in spec.containers.iter().enumerate() {
        let container = c.name.clone().unwrap_or_else(|| format!("container-{i}"));
        for from in &c.env_from {
            let (kind, r) = match (&from.secret_ref, &from.config_map_ref) {
                (Some(r), _) => (ConfigKind::Secret, r),
                (None, Some(r)) => (ConfigKind::ConfigMap, r),
                (None, None) => continue,
            };
            let obj = r.name.as_deref().unwrap_or_default();
            if r.optional != Some(true) && values.get(kind, obj).is_none() {
                missing.push(format!(
                    "{kind} `{obj}` not found (container `{container}`, envFrom)"
                ));
            }
        }
        for e in &c.env {
            let Some((kind, sel)) = key_selector(e) else {
                continue;
            };
            let name = e.name.as_deref().unwrap_or_default();
            let obj = sel.name.as_deref().unwrap_or_default();
            let key = sel.key.as_deref().unwrap_or_default();
            let optional = sel.optional == Some(true);
            match values.get(kind, obj).map(|d| d.0.get(key)) {
                None if optional => {}
                None => missing.push(format!(
                    "{kind} `{obj}` not found (container `{container}`, env `{name}`)"
                )),
                Some(None) if optional => {}
                Some(None) => missing.push(format!(
                    "key `{key}` not found in {kind} `{obj}` (container `{container}`, env `{name}`)"
                )),
                Some(Some(v)) if env_text(v).is_none() => missing.push(format!(
                    "key `{key}` of {kind} `{obj}` is not UTF-8 text without NUL bytes, so it cannot be env `{name}`"
                )),
                Some(Some(_)) => {}
            }
        }
    }
    missing
}

/// A value as an environment variable's: UTF-8 without NUL, else nothing.
fn env_text(v: &[u8]) -> Option<String> {
    std::str::from_utf8(v)
        .ok()
        .filter(|s| !s.contains('\0'))
        .map(str::to_owned)
}

/// The value of a manifest's environment variable: literal, or from a `valueFrom` reference
/// to the instance's own fields or resources.
fn env_value(ctx: &InstanceContext<'_>, c: &Container, e: &EnvVar) -> String {
    match (&e.value, &e.value_from) {
        (Some(v), _) => v.clone(),
        (None, Some(from)) => {
            if let Some(f) = &from.field_ref {
                field_value(
                    f.field_path.as_deref().unwrap_or_default(),
                    ctx.revision,
                    ctx.id,
                )
            } else if let Some(r) = &from.resource_field_ref {
                resource_value(ctx.revision, c, r)
            } else {
                String::new()
            }
        }
        (None, None) => String::new(),
    }
}

/// Whom a container runs as: the manifest's securityContext, else the image's user.
fn user_plan(sc: &SecurityContext, cfg: &RunConfig) -> UserPlan {
    UserPlan {
        run_as_user: sc.run_as_user.and_then(|u| u32::try_from(u).ok()),
        run_as_group: sc.run_as_group.and_then(|g| u32::try_from(g).ok()),
        image_user: cfg.user.clone().filter(|u| !u.is_empty()),
        run_as_non_root: sc.run_as_non_root == Some(true),
    }
}

/// A container's volume mounts (those naming a volume and a path).
fn mount_plans(c: &Container) -> Vec<MountPlan> {
    c.volume_mounts
        .iter()
        .filter_map(|m| {
            Some(MountPlan {
                volume: m.name.clone()?,
                path: m.mount_path.clone()?,
                read_only: m.read_only == Some(true),
                sub_path: m.sub_path.clone(),
            })
        })
        .collect()
}

/// A container's readiness probe: its own, or for the serving container a TCP check of its
/// port every second.
fn readiness(c: &Container, port: u16, is_serving: bool) -> Option<ProbeSpec> {
    match &c.readiness_probe {
        Some(p) => Some(probe(p, port, 10)),
        None if is_serving => Some(probe(&Probe::default(), port, 1)),
        None => None,
    }
}

/// What bounds a container's writable layer when neither `ephemeral-storage` nor `memory`
/// is limited.
pub const DEFAULT_SCRATCH_BYTES: u64 = 1 << 30;

/// The bound of a container's writable layer (and the default of a disk emptyDir's): its
/// `ephemeral-storage` limit, else its memory limit (Cloud Run's in-memory file system),
/// else [`DEFAULT_SCRATCH_BYTES`]. Either way it is memory, charged to the container.
fn scratch_bytes(c: &Container) -> u64 {
    quantity(c, "limits", "ephemeral-storage")
        .or_else(|| quantity(c, "limits", "memory"))
        .map_or(DEFAULT_SCRATCH_BYTES, |q| q.as_units())
}

/// The files of a secret, configMap or projected volume, from `values`: each source's
/// items (or every key at its own name), later sources replacing earlier files at the same
/// path. Absent optional objects and keys give no file (missing required ones were refused
/// by [`missing_config`]).
fn volume_files(v: &Volume, values: &ConfigValues) -> VolumeFiles {
    let default_mode = v.default_mode().unwrap_or(0o644) as u32 & 0o777;
    let mut files: Vec<VolumeFile> = Vec::new();
    let mut put = |path: &str, mode: u32, data: &[u8]| {
        files.retain(|f| f.path != path);
        files.push(VolumeFile {
            path: path.to_owned(),
            mode,
            data: data.to_vec(),
        });
    };
    for (is_secret, name, items, _) in v.config_sources() {
        let kind = if is_secret {
            ConfigKind::Secret
        } else {
            ConfigKind::ConfigMap
        };
        let Some(data) = values.get(kind, name.unwrap_or_default()) else {
            continue;
        };
        if items.is_empty() {
            for (k, bytes) in &data.0 {
                put(k, default_mode, bytes);
            }
        } else {
            for it in items {
                let (Some(k), Some(path)) = (it.key.as_deref(), it.path.as_deref()) else {
                    continue;
                };
                if let Some(bytes) = data.0.get(k) {
                    let mode = it.mode.map_or(default_mode, |m| m as u32 & 0o777);
                    put(path, mode, bytes);
                }
            }
        }
    }
    VolumeFiles(files)
}

/// An instance's volumes: the revision's emptyDir volumes (a disk one without a `sizeLimit`
/// is bounded by `default_size`, the serving container's) and its volumes of Secret and
/// ConfigMap keys, with their files from `values`.
fn volume_plans(volumes: &[Volume], default_size: u64, values: &ConfigValues) -> Vec<VolumePlan> {
    volumes
        .iter()
        .filter_map(|v| {
            if v.is_config() {
                return Some(VolumePlan {
                    name: v.name.clone()?,
                    memory: false,
                    size_limit: None,
                    config: true,
                    files: volume_files(v, values),
                });
            }
            let ed = v.empty_dir.as_ref()?;
            Some(VolumePlan {
                name: v.name.clone()?,
                memory: ed.medium.as_deref() == Some("Memory"),
                size_limit: Some(
                    ed.size_limit
                        .as_ref()
                        .and_then(|q| Quantity::parse(&q.0).ok())
                        .map_or(default_size, |q| q.as_units()),
                ),
                config: false,
                files: VolumeFiles::default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(limits: serde_json::Value) -> Container {
        serde_json::from_value(serde_json::json!({
            "image": "x",
            "resources": {"limits": limits}
        }))
        .expect("a container")
    }

    /// The writable layer is bounded by ephemeral-storage, else memory, else the default.
    #[test]
    fn scratch_is_bounded_by_the_limits() {
        let both = container(serde_json::json!({"memory": "256Mi", "ephemeral-storage": "100Mi"}));
        assert_eq!(scratch_bytes(&both), 100 << 20);
        let memory = container(serde_json::json!({"memory": "256Mi"}));
        assert_eq!(scratch_bytes(&memory), 256 << 20);
        let none = container(serde_json::json!({}));
        assert_eq!(scratch_bytes(&none), DEFAULT_SCRATCH_BYTES);
    }

    /// Every emptyDir gets a size: its own sizeLimit, else the default given.
    #[test]
    fn empty_dirs_get_a_size() {
        let volumes: Vec<Volume> = serde_json::from_value(serde_json::json!([
            {"name": "a", "emptyDir": {}},
            {"name": "b", "emptyDir": {"sizeLimit": "16Mi"}},
            {"name": "c", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}},
        ]))
        .expect("volumes");
        let plans = volume_plans(&volumes, 256 << 20, &ConfigValues::default());
        let sizes: Vec<(bool, Option<u64>)> =
            plans.iter().map(|v| (v.memory, v.size_limit)).collect();
        assert_eq!(
            sizes,
            [
                (false, Some(256 << 20)),
                (false, Some(16 << 20)),
                (true, Some(8 << 20))
            ]
        );
    }

    fn values() -> ConfigValues {
        let mut v = ConfigValues::default();
        v.insert(
            ConfigKind::Secret,
            "db".into(),
            Data(
                [
                    ("password".to_owned(), b"pw".to_vec()),
                    ("user".to_owned(), b"u".to_vec()),
                ]
                .into(),
            ),
        );
        v.insert(
            ConfigKind::ConfigMap,
            "cfg".into(),
            Data([("mode".to_owned(), b"fast".to_vec())].into()),
        );
        v
    }

    fn spec(v: serde_json::Value) -> RevisionSpec {
        serde_json::from_value(v).expect("spec")
    }

    /// Volume files: items with paths and modes, every key otherwise, projected sources in
    /// order; an optional missing object gives nothing.
    #[test]
    fn volume_files_follow_items_and_modes() {
        let s = spec(serde_json::json!({
            "containers": [{"image": "x"}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "db", "defaultMode": 0o400,
                    "items": [{"key": "password", "path": "sub/pw", "mode": 0o440}, {"key": "user", "path": "u"}]}},
                {"name": "b", "configMap": {"name": "cfg"}},
                {"name": "c", "projected": {"sources": [
                    {"secret": {"name": "db"}},
                    {"configMap": {"name": "absent", "optional": true}},
                    {"configMap": {"name": "cfg", "items": [{"key": "mode", "path": "password"}]}}
                ]}}
            ]
        }));
        let vals = values();
        assert!(missing_config(&s, &vals).is_empty());
        let plans = volume_plans(&s.volumes, 1 << 20, &vals);
        let files = |i: usize| -> Vec<(String, u32, Vec<u8>)> {
            plans[i]
                .files
                .0
                .iter()
                .map(|f| (f.path.clone(), f.mode, f.data.clone()))
                .collect()
        };
        assert!(plans.iter().all(|p| p.config));
        assert_eq!(
            files(0),
            [
                ("sub/pw".into(), 0o440, b"pw".to_vec()),
                ("u".into(), 0o400, b"u".to_vec())
            ]
        );
        assert_eq!(files(1), [("mode".into(), 0o644, b"fast".to_vec())]);
        // The ConfigMap's file replaces the Secret's at the same path.
        assert_eq!(
            files(2),
            [
                ("user".into(), 0o644, b"u".to_vec()),
                ("password".into(), 0o644, b"fast".to_vec())
            ]
        );
        // Serialized (the recorded plan), no file content.
        let json = serde_json::to_string(&plans).expect("json");
        assert!(!json.contains("pw\"") && !json.contains("fast"), "{json}");
        assert!(!format!("{plans:?}").contains("fast"));
    }

    /// Missing objects and keys are named, per volume and env entry; optional ones are not.
    #[test]
    fn missing_config_names_objects_and_keys() {
        let s = spec(serde_json::json!({
            "containers": [{"image": "x", "name": "app",
                "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "db", "key": "nope"}}},
                        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "db", "key": "nope", "optional": true}}}],
                "envFrom": [{"configMapRef": {"name": "gone"}}, {"secretRef": {"name": "gone2", "optional": true}}]}],
            "volumes": [{"name": "v", "secret": {"secretName": "db", "items": [{"key": "k2", "path": "p"}]}}]
        }));
        let m = missing_config(&s, &values());
        assert_eq!(
            m,
            [
                "key `k2` not found in Secret `db` (volume `v`)",
                "ConfigMap `gone` not found (container `app`, envFrom)",
                "key `nope` not found in Secret `db` (container `app`, env `A`)",
            ]
        );
    }
}
