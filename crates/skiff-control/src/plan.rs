//! Turning a Revision and its pinned images into an [`InstancePlan`] for the runtime:
//! Kubernetes' command/args rules, the runtime contract's environment (`PORT`, `K_SERVICE`,
//! `K_CONFIGURATION`, `K_REVISION`), resolved `valueFrom` references, limits, probes and
//! volumes.

use std::time::Duration;

use skiff_api::object::{LABEL_CONFIGURATION, Revision};
use skiff_api::quantity::Quantity;
use skiff_api::types::{Container, EnvVar, IntOrString, Probe, SecurityContext, Volume};
use skiff_image::ImageRecord;
use skiff_image::content::RunConfig;
use skiff_runtime::instance::{ContainerPlan, InstancePlan, MountPlan, UserPlan, VolumePlan};
use skiff_runtime::probe::{ProbeAction, ProbeSpec};
use skiff_runtime::spec::{CPU_PERIOD_US, capabilities};

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

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
}

/// The plan of a new instance `id` of `revision`, whose containers run `images` (in the
/// order of its containers).
pub fn plan(
    revision: &Revision,
    images: &[ImageRecord],
    layer_dir: impl Fn(&str) -> std::path::PathBuf,
    id: &str,
) -> Result<InstancePlan, PlanError> {
    let spec = &revision.spec;
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
    };
    let mut containers = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let image = images
            .get(i)
            .ok_or_else(|| PlanError(format!("no pinned image for container {i}")))?;
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
    let env = environment(ctx, c, cfg);
    let sc = c.security_context.clone().unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    let memory_limit = quantity(c, "limits", "memory").map(|q| q.as_units() as i64);
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
        return Err(PlanError(format!(
            "container `{}` has no command: the image sets no Entrypoint or Cmd, and the manifest no command",
            c.name.as_deref().unwrap_or_default()
        )));
    }
    Ok(args)
}

/// A container's environment: the image's, then the runtime contract's variables, then the
/// manifest's (each replacing an earlier one of the same name).
fn environment(ctx: &InstanceContext<'_>, c: &Container, cfg: &RunConfig) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = cfg
        .env
        .iter()
        .flatten()
        .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let mut set = |k: &str, v: String| {
        env.retain(|(n, _)| n != k);
        env.push((k.to_owned(), v));
    };
    set("PORT", ctx.port.to_string());
    set("K_SERVICE", ctx.service.to_owned());
    set("K_CONFIGURATION", ctx.configuration.to_owned());
    set("K_REVISION", ctx.revision.metadata.name.clone());
    for e in &c.env {
        let Some(name) = &e.name else { continue };
        set(name, env_value(ctx, c, e));
    }
    env
}

/// The value of a manifest's environment variable: literal, or from a `valueFrom` reference.
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

/// An instance's volumes: the revision's emptyDir volumes; a disk one without a
/// `sizeLimit` is bounded by `default_size` (the serving container's).
fn volume_plans(volumes: &[Volume], default_size: u64) -> Vec<VolumePlan> {
    volumes
        .iter()
        .filter_map(|v| {
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
        let plans = volume_plans(&volumes, 256 << 20);
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
}
