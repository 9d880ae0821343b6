//! Rendering objects for people (tables, descriptions) and machines (JSON, YAML).

use comfy_table::{Table, presets};
use serde::Serialize;
use skiff_api::job::{
    AttemptResult, CompletionStatus, Execution, Job, JobSchedule, STARTED_BY_ANNOTATION, TaskSpec,
    TaskState,
};
use skiff_api::object::{ConditionStatus, Revision, Service};
use skiff_api::wire::{InstanceView, ScaleStatus, StartupPhases};

/// Makes a CLI verb end quietly, with status 0, when whoever reads its standard output has
/// gone (`skiff get services | head -1`, `… | grep -q`): the reader has what it wanted.
/// Rust ignores SIGPIPE, so `println!` meets EPIPE and panics with "failed printing to
/// stdout"; that panic, and only that one, exits here instead of printing a backtrace.
/// Not for `skiff server`, which never writes to standard output.
pub fn end_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        let broken_pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe).to_string();
        let os_broken_pipe = std::io::Error::from_raw_os_error(32).to_string();
        if message.starts_with("failed printing to stdout")
            && (message.contains(&broken_pipe) || message.contains(&os_broken_pipe))
        {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// `-o/--output` formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A readable table.
    Table,
    /// YAML, as `kubectl get -o yaml` prints it.
    Yaml,
    /// JSON.
    Json,
}

/// Renders any API object as JSON or YAML text.
pub fn render<T: Serialize>(value: &T, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(value)?),
        Format::Yaml | Format::Table => {
            // Through a JSON value, so maps keep the order the API gives them.
            let v = serde_json::to_value(value)?;
            serde_saphyr::to_string(&v)?
        }
    })
}

/// A kubectl-style table: no borders, columns padded.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.set_header(header.iter().map(|h| h.to_owned()).collect::<Vec<_>>());
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    t
}

/// Prints a table without its trailing padding.
pub fn print_table(t: &Table) {
    for line in t.to_string().lines() {
        println!("{}", line.trim_end());
    }
}

/// `5s`, `3m`, `2h`, `4d`, from an RFC 3339 timestamp to now.
pub fn age(timestamp: &str) -> String {
    let Ok(then) = timestamp.parse::<jiff::Timestamp>() else {
        return "?".into();
    };
    let secs = jiff::Timestamp::now()
        .as_second()
        .saturating_sub(then.as_second())
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn ready_of(conditions: Option<&skiff_api::object::Condition>) -> (String, String) {
    match conditions {
        Some(c) => (
            c.status.to_string(),
            if c.status == ConditionStatus::True {
                String::new()
            } else {
                c.reason.clone().unwrap_or_default()
            },
        ),
        None => ("Unknown".into(), String::new()),
    }
}

/// Ready and desired instances of a Service, summed over its revisions.
pub fn instance_counts(s: &Service, revisions: &[Revision]) -> (u32, u32) {
    revisions
        .iter()
        .filter(|r| {
            r.metadata.namespace == s.metadata.namespace
                && r.service_name() == Some(s.metadata.name.as_str())
        })
        .fold((0, 0), |(ready, desired), r| {
            (
                ready + r.status.actual_replicas,
                desired + r.status.desired_replicas,
            )
        })
}

/// The `skiff get services` table.
pub fn services_table(services: &[Service], revisions: &[Revision], all_namespaces: bool) -> Table {
    let mut header = vec![
        "NAME",
        "URL",
        "LATESTCREATED",
        "LATESTREADY",
        "INSTANCES",
        "READY",
        "REASON",
        "AGE",
    ];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut t = table(&header);
    for s in services {
        let (ready, reason) = ready_of(s.condition("Ready"));
        let mut row = vec![
            s.metadata.name.clone(),
            s.status.url.clone().unwrap_or_default(),
            s.status
                .latest_created_revision_name
                .clone()
                .unwrap_or_default(),
            s.status
                .latest_ready_revision_name
                .clone()
                .unwrap_or_default(),
            {
                let (r, d) = instance_counts(s, revisions);
                format!("{r}/{d}")
            },
            ready,
            reason,
            age(&s.metadata.creation_timestamp),
        ];
        if all_namespaces {
            row.insert(0, s.metadata.namespace.clone());
        }
        t.add_row(row);
    }
    t
}

/// Secrets: name, type, keys with their sizes, age. Never a value.
pub fn secrets_table(items: &[skiff_api::config::SecretView], all_namespaces: bool) -> Table {
    let mut header = vec!["NAME", "TYPE", "DATA", "AGE"];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut t = table(&header);
    for s in items {
        let mut row = vec![
            s.metadata.name.clone(),
            s.type_.clone(),
            s.sizes.len().to_string(),
            age(&s.metadata.creation_timestamp),
        ];
        if all_namespaces {
            row.insert(0, s.metadata.namespace.clone());
        }
        t.add_row(row);
    }
    t
}

/// ConfigMaps: name, number of keys, age.
pub fn config_maps_table(
    items: &[skiff_api::config::ConfigMapView],
    all_namespaces: bool,
) -> Table {
    let mut header = vec!["NAME", "DATA", "AGE"];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut t = table(&header);
    for c in items {
        let mut row = vec![
            c.metadata.name.clone(),
            (c.data.len() + c.binary_data.len()).to_string(),
            age(&c.metadata.creation_timestamp),
        ];
        if all_namespaces {
            row.insert(0, c.metadata.namespace.clone());
        }
        t.add_row(row);
    }
    t
}

/// A Secret in detail, as `kubectl describe secret`: its keys and their sizes, no value.
pub fn describe_secret(s: &skiff_api::config::SecretView) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "Name:         {}", s.metadata.name);
    let _ = writeln!(out, "Namespace:    {}", s.metadata.namespace);
    let _ = writeln!(out, "Type:         {}", s.type_);
    let _ = writeln!(
        out,
        "Created:      {} ({} ago)",
        s.metadata.creation_timestamp,
        age(&s.metadata.creation_timestamp)
    );
    for (k, v) in &s.metadata.labels {
        let _ = writeln!(out, "Label:        {k}={v}");
    }
    let _ = writeln!(out, "\nData\n====");
    for (k, size) in &s.sizes {
        let _ = writeln!(out, "{k}:  {size} bytes");
    }
    out
}

/// The `skiff get revisions` table.
pub fn revisions_table(revisions: &[Revision], all_namespaces: bool) -> Table {
    let mut header = vec![
        "NAME",
        "SERVICE",
        "GENERATION",
        "IMAGE",
        "READY",
        "REASON",
        "AGE",
    ];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut t = table(&header);
    for r in revisions {
        let (ready, reason) = ready_of(r.condition("Ready"));
        let image = r
            .spec
            .containers
            .iter()
            .filter_map(|c| c.image.clone())
            .collect::<Vec<_>>()
            .join(",");
        let mut row = vec![
            r.metadata.name.clone(),
            r.service_name().unwrap_or_default().to_owned(),
            r.metadata
                .labels
                .get(skiff_api::object::LABEL_CONFIGURATION_GENERATION)
                .cloned()
                .unwrap_or_default(),
            image,
            ready,
            reason,
            age(&r.metadata.creation_timestamp),
        ];
        if all_namespaces {
            row.insert(0, r.metadata.namespace.clone());
        }
        t.add_row(row);
    }
    t
}

/// The `skiff describe service` text.
pub fn describe_service(s: &Service, revisions: &[Revision]) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| out.push_str(&format!("{:<14}{v}\n", format!("{k}:")));
    line("Name", &s.metadata.name);
    line("Namespace", &s.metadata.namespace);
    line("URL", s.status.url.as_deref().unwrap_or("-"));
    line("Age", &age(&s.metadata.creation_timestamp));
    line("Generation", &s.metadata.generation.to_string());
    line("Version", &s.metadata.resource_version);
    let kv = |m: &std::collections::BTreeMap<String, String>| {
        if m.is_empty() {
            "-".to_owned()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    line("Labels", &kv(&s.metadata.labels));
    line("Annotations", &kv(&s.metadata.annotations));

    out.push_str("\nRevisions:\n");
    let mut t = table(&[
        "NAME",
        "GENERATION",
        "TRAFFIC",
        "TAGS",
        "INSTANCES",
        "IMAGE",
        "READY",
        "REASON",
        "AGE",
    ]);
    let mut ordered: Vec<&Revision> = revisions.iter().collect();
    ordered.sort_by_key(|r| std::cmp::Reverse(r.configuration_generation()));
    for r in ordered {
        let name = &r.metadata.name;
        let served: Vec<_> = s
            .status
            .traffic
            .iter()
            .filter(|t| &t.revision_name == name)
            .collect();
        let percent: i64 = served.iter().map(|t| t.percent).sum();
        let tags: Vec<String> = served.iter().filter_map(|t| t.tag.clone()).collect();
        let (ready, reason) = ready_of(r.condition("Ready"));
        t.add_row(vec![
            name.clone(),
            r.metadata
                .labels
                .get(skiff_api::object::LABEL_CONFIGURATION_GENERATION)
                .cloned()
                .unwrap_or_default(),
            if served.is_empty() {
                "-".into()
            } else {
                format!("{percent}%")
            },
            if tags.is_empty() {
                "-".into()
            } else {
                tags.join(",")
            },
            format!("{}/{}", r.status.actual_replicas, r.status.desired_replicas),
            r.spec
                .containers
                .iter()
                .filter_map(|c| c.image.clone())
                .collect::<Vec<_>>()
                .join(","),
            ready,
            reason,
            age(&r.metadata.creation_timestamp),
        ]);
    }
    for l in t.to_string().lines() {
        out.push_str(&format!("  {}\n", l.trim_end()));
    }

    out.push_str("\nTraffic:\n");
    match &s.spec.traffic {
        None => out.push_str("  100% to the latest ready revision\n"),
        Some(targets) => {
            for t in targets {
                let target = match &t.revision_name {
                    Some(r) => r.clone(),
                    None => "@latest".into(),
                };
                let tag = t
                    .tag
                    .as_ref()
                    .map(|t| format!(" (tag {t})"))
                    .unwrap_or_default();
                out.push_str(&format!("  {:>3}% {target}{tag}\n", t.percent.unwrap_or(0)));
            }
        }
    }
    if s.status.traffic.is_empty() {
        out.push_str("  (not served yet: no target resolves to a ready revision)\n");
    }

    out.push_str(&conditions(&s.status.conditions));
    out
}

/// A request window for people: `120 req, 5xx 0.8%, p95 10.2 ms`.
fn window(f: &skiff_api::rollout::Figures) -> String {
    let p95 = f
        .p95_ms
        .map(|p| format!(", p95 {p:.1} ms"))
        .unwrap_or_default();
    format!(
        "{} req, 5xx {:.1}%{p95}",
        f.requests,
        f.error_rate() * 100.0
    )
}

/// A rollout policy in one line.
pub fn rollout_policy(p: &skiff_api::rollout::RolloutPolicy) -> String {
    let steps: Vec<String> = p.steps.iter().map(|s| format!("{s}%")).collect();
    let step = humantime_secs(p.step_millis);
    let checks = if p.analysis.is_none() {
        "no checks (a timed ramp)".to_owned()
    } else {
        format!(
            "checks {}, at least {} new requests a step",
            p.analysis, p.min_requests
        )
    };
    let from = match p.source.as_str() {
        "annotation" => "skiff.dev/rollout",
        "knative" => "serving.knative.dev/rollout-duration",
        _ => "the daemon's default",
    };
    format!("{} every {step}; {checks} (from {from})", steps.join(" → "))
}

/// `2s`, `1m 30s`, `1.5s`: jiff's friendly duration format.
fn humantime_secs(ms: u64) -> String {
    format!(
        "{:#}",
        jiff::SignedDuration::from_millis(i64::try_from(ms).unwrap_or(i64::MAX))
    )
}

/// `skiff rollout status` and the rollout part of `skiff describe service`: the policy, the
/// step in progress with its figures so far, the steps done with their checks, and the
/// rollouts before.
pub fn describe_rollout(r: &skiff_api::rollout::RolloutReport) -> String {
    let mut out = String::from("\nRollout:\n");
    let mut line = |k: &str, v: &str| out.push_str(&format!("  {:<12}{v}\n", format!("{k}:")));
    line(
        "Policy",
        &r.policy
            .as_ref()
            .map(rollout_policy)
            .unwrap_or_else(|| "none: a new revision takes its traffic at once".into()),
    );
    if let Some(c) = &r.condition {
        let status = match (c.status, c.reason.as_deref()) {
            (skiff_api::object::ConditionStatus::True, _) => "rolled out".to_owned(),
            (_, Some(reason)) => reason.to_owned(),
            (s, None) => s.to_string(),
        };
        let message = c
            .message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        line("State", &format!("{status}{message}"));
    }
    let Some(status) = &r.rollout else {
        return out;
    };
    line("Stable", status.stable_revision.as_deref().unwrap_or("-"));
    if let Some(h) = &status.held_revision {
        line(
            "Held",
            &format!("{h} (not rolled out by itself; `skiff rollout resume` lets it go)"),
        );
    }
    if let Some(p) = &status.current {
        line(
            "Rolling out",
            &format!(
                "{} from {}: step {} of {} ({}%){}, step started {} ago",
                p.revision,
                p.from,
                p.step + 1,
                p.policy.steps.len(),
                p.percent(),
                if p.paused { ", paused" } else { "" },
                age(&p.step_started_at)
            ),
        );
        if let Some(l) = &r.live {
            line(
                "This step",
                &format!("new {} | stable {}", window(&l.canary), window(&l.stable)),
            );
        }
        if !p.steps.is_empty() {
            out.push_str(&steps_table(&p.steps));
        }
    }
    if !status.history.is_empty() {
        out.push_str("  History:\n");
        let mut t = table(&["REVISION", "FROM", "OUTCOME", "ENDED", "WHY"]);
        for h in &status.history {
            t.add_row(vec![
                h.revision.clone(),
                h.from.clone(),
                h.outcome.clone(),
                format!("{} ago", age(&h.ended_at)),
                h.message.clone(),
            ]);
        }
        for l in t.to_string().lines() {
            out.push_str(&format!("    {}\n", l.trim_end()));
        }
        if let Some(last) = status.history.first()
            && !last.steps.is_empty()
        {
            out.push_str(&format!("  Steps of {}:\n", last.revision));
            out.push_str(&steps_table(&last.steps));
        }
    }
    out
}

fn steps_table(steps: &[skiff_api::rollout::StepResult]) -> String {
    let mut t = table(&["PERCENT", "VERDICT", "NEW", "STABLE", "CHECKS"]);
    for s in steps {
        let checks: Vec<String> = s
            .checks
            .iter()
            .map(|c| format!("{} {}: {}", c.check, c.outcome, c.message))
            .collect();
        t.add_row(vec![
            format!("{}%", s.percent),
            s.verdict.clone(),
            window(&s.canary),
            window(&s.stable),
            if checks.is_empty() {
                "-".into()
            } else {
                checks.join("; ")
            },
        ]);
    }
    let mut out = String::new();
    for l in t.to_string().lines() {
        out.push_str(&format!("    {}\n", l.trim_end()));
    }
    out
}

/// A conditions table under "Conditions:".
pub fn conditions(list: &[skiff_api::object::Condition]) -> String {
    let mut out = String::from("\nConditions:\n");
    let mut t = table(&["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]);
    for c in list {
        t.add_row(vec![
            c.condition_type.clone(),
            c.status.to_string(),
            c.reason.clone().unwrap_or_default(),
            age(&c.last_transition_time),
            c.message.clone().unwrap_or_default(),
        ]);
    }
    for l in t.to_string().lines() {
        out.push_str(&format!("  {}\n", l.trim_end()));
    }
    out
}

/// `skiff describe revision`: one revision, its images, scale and conditions (whose
/// messages say why it is not ready).
pub fn describe_revision(r: &Revision) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| out.push_str(&format!("{:<14}{v}\n", format!("{k}:")));
    line("Name", &r.metadata.name);
    line("Namespace", &r.metadata.namespace);
    line("Service", r.service_name().unwrap_or("-"));
    line("Age", &age(&r.metadata.creation_timestamp));
    let images: Vec<String> = r
        .spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let digest = r
                .status
                .container_statuses
                .get(i)
                .and_then(|s| s.image_digest.clone())
                .unwrap_or_else(|| "(not resolved yet)".into());
            format!("{} → {digest}", c.image.clone().unwrap_or_default())
        })
        .collect();
    line("Images", &images.join(", "));
    line(
        "Instances",
        &format!(
            "{} ready of {} wanted",
            r.status.actual_replicas, r.status.desired_replicas
        ),
    );
    out.push_str(&conditions(&r.status.conditions));
    out
}

/// The scaling part of `skiff describe service`: per revision desired and ready instances,
/// load, cold starts, and the last decisions with their reasons.
pub fn describe_scaling(scale: &ScaleStatus) -> String {
    let mut out = String::from("\nScaling:\n");
    if let Some(n) = scale.replicas_override {
        out.push_str(&format!(
            "  manual override: the latest revision runs {n} instance(s) (`skiff scale SERVICE auto` undoes it)\n"
        ));
    }
    if let Some(why) = &scale.scale_up_stopped {
        out.push_str(&format!("  scale-up stopped: {why}\n"));
    }
    let revisions = &scale.revisions;
    if revisions.is_empty() {
        out.push_str("  no revision is scaled yet\n");
        return out;
    }
    let mut t = table(&[
        "REVISION",
        "ROUTED",
        "DESIRED",
        "READY",
        "IN-FLIGHT",
        "WAITING",
        "PANIC",
        "STABLE",
        "COLD STARTS",
        "LAST COLD START",
    ]);
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    for r in revisions {
        let cold = r.cold_starts;
        let avg = if cold > 0 {
            format!(
                "{cold} (avg {:.0}ms)",
                r.cold_start_seconds_total * 1000.0 / cold as f64
            )
        } else {
            "0".into()
        };
        t.add_row(vec![
            r.revision.clone(),
            yes_no(r.routed),
            r.desired.to_string(),
            r.ready.to_string(),
            r.in_flight.to_string(),
            r.waiting.to_string(),
            yes_no(r.panicking),
            format!("{:.2}", r.stable_average),
            avg,
            r.last_cold_start_seconds
                .map(|s| format!("{:.0}ms", s * 1000.0))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    for l in t.to_string().lines() {
        out.push_str(&format!("  {}\n", l.trim_end()));
    }
    out.push_str("\nScaling decisions (newest first):\n");
    let mut any = false;
    for r in revisions {
        for d in r.decisions.iter().take(5) {
            any = true;
            out.push_str(&format!(
                "  {:<5} {} → {} instance(s) (ready {}): {}\n",
                age(&d.at),
                r.revision,
                d.desired,
                d.ready,
                d.reason
            ));
        }
    }
    if !any {
        out.push_str("  none yet\n");
    }
    out
}

/// The instances part of `skiff describe service`: state, restarts and usage.
pub fn describe_instances(instances: &[InstanceView]) -> String {
    let mut out = String::from("\nInstances:\n");
    if instances.is_empty() {
        out.push_str("  none running\n");
        return out;
    }
    let mut t = table(&[
        "INSTANCE", "REVISION", "PHASE", "READY", "RESTARTS", "CPU", "MEMORY", "PEAK", "LIMIT",
        "PIDS", "OOM", "START", "AGE",
    ]);
    let mib = |b: u64| format!("{:.1}Mi", b as f64 / 1048576.0);
    let mut notes = Vec::new();
    for i in instances {
        let s = &i.status;
        let u = &i.usage;
        let restarts: u64 = s.containers.iter().map(|c| u64::from(c.restarts)).sum();
        t.add_row(vec![
            i.id.clone(),
            i.revision.clone(),
            s.phase.as_str().to_owned(),
            if s.ready { "yes" } else { "no" }.to_owned(),
            restarts.to_string(),
            format!("{:.2}s", u.cpu_nanos as f64 / 1e9),
            mib(u.memory_bytes),
            mib(u.memory_peak_bytes),
            if u.memory_limit_bytes == 0 {
                "-".into()
            } else {
                mib(u.memory_limit_bytes)
            },
            u.pids.to_string(),
            u.oom_kills.to_string(),
            s.start_to_ready_ms
                .map(|ms| format!("{ms:.0}ms"))
                .unwrap_or_else(|| "-".into()),
            age(&s.started_at),
        ]);
        if let Some(p) = &s.startup {
            notes.push(startup_note(&i.id, p, s.start_kind));
        }
        if s.phase == skiff_api::wire::Phase::Parked {
            notes.push(format!(
                "  {}: parked (created ahead, its process held before exec; a request starts it in a few ms; not billed)",
                i.id
            ));
        }
        for c in &s.containers {
            if let Some(term) = &c.last_termination {
                notes.push(format!(
                    "  {}/{}: last ended {} ({}), {}",
                    i.id,
                    c.name,
                    term.reason,
                    term.exit_code
                        .map(|c| format!("exit code {c}"))
                        .unwrap_or_else(|| "no exit code".into()),
                    term.message
                ));
            }
        }
    }
    for l in t.to_string().lines() {
        out.push_str(&format!("  {}\n", l.trim_end()));
    }
    for n in notes {
        out.push_str(&n);
        out.push('\n');
    }
    out
}

/// How an instance's start was spent, for `describe`: `  <id>: started in 812ms (image 3ms,
/// container 240ms, ready 569ms)`, or the phases so far while it is not ready.
fn startup_note(id: &str, p: &StartupPhases, kind: skiff_api::wire::StartKind) -> String {
    let ms = |v: f64| {
        if v < 10.0 {
            format!("{v:.1}ms")
        } else {
            format!("{v:.0}ms")
        }
    };
    let (image, container) = (ms(p.image_ms), ms(p.container_ms));
    let kind = kind.as_str();
    match (p.ready_ms, p.total_ms()) {
        (Some(ready), Some(total)) => format!(
            "  {id}: started {kind} in {} (image {image}, container {container}, ready {})",
            ms(total),
            ms(ready)
        ),
        _ => {
            format!("  {id}: starting {kind} (image {image}, container {container}, not ready yet)")
        }
    }
}

/// How an execution stands, in a word.
pub fn completion_word(s: CompletionStatus) -> &'static str {
    match s {
        CompletionStatus::ExecutionSucceeded => "Succeeded",
        CompletionStatus::ExecutionFailed => "Failed",
        CompletionStatus::ExecutionRunning => "Running",
        CompletionStatus::ExecutionPending => "Pending",
        CompletionStatus::ExecutionCancelled => "Cancelled",
    }
}

/// A task's state, in a word.
fn task_word(s: TaskState) -> &'static str {
    match s {
        TaskState::Pending => "Pending",
        TaskState::Running => "Running",
        TaskState::Succeeded => "Succeeded",
        TaskState::Failed => "Failed",
        TaskState::Cancelled => "Cancelled",
    }
}

/// A Job's schedule as shown (`-` without one).
fn schedule_of(j: &Job) -> String {
    j.status
        .schedule
        .clone()
        .or_else(|| JobSchedule::of(&j.metadata.annotations))
        .map(|s| match s.timezone {
            Some(tz) => format!("{} ({tz})", s.schedule),
            None => s.schedule,
        })
        .unwrap_or_else(|| "-".into())
}

/// The `skiff get jobs` table.
pub fn jobs_table(jobs: &[Job], all_namespaces: bool) -> Table {
    let mut header = vec![
        "NAME",
        "EXECUTIONS",
        "LAST EXECUTION",
        "STATUS",
        "SCHEDULE",
        "AGE",
    ];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut t = table(&header);
    for j in jobs {
        let last = j.status.latest_created_execution.as_ref();
        let mut row = vec![
            j.metadata.name.clone(),
            j.status.execution_count.to_string(),
            last.map_or_else(|| "-".into(), |r| r.name.clone()),
            last.map_or("-", |r| completion_word(r.completion_status))
                .to_owned(),
            schedule_of(j),
            age(&j.metadata.creation_timestamp),
        ];
        if all_namespaces {
            row.insert(0, j.metadata.namespace.clone());
        }
        t.add_row(row);
    }
    t
}

/// The `skiff get executions` table.
pub fn executions_table(executions: &[Execution]) -> Table {
    let mut t = table(&[
        "NAME",
        "JOB",
        "TASKS",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "RETRIED",
        "STATUS",
        "AGE",
    ]);
    for e in executions {
        let s = &e.status;
        t.add_row(vec![
            e.metadata.name.clone(),
            e.job().to_owned(),
            e.spec.task_count.to_string(),
            s.running_count.to_string(),
            s.succeeded_count.to_string(),
            s.failed_count.to_string(),
            s.retried_count.to_string(),
            completion_word(e.completion_status()).to_owned(),
            age(&e.metadata.creation_timestamp),
        ]);
    }
    t
}

/// `a=b, c=d`, or `-`.
fn key_values(m: &std::collections::BTreeMap<String, String>) -> String {
    if m.is_empty() {
        "-".to_owned()
    } else {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A task template's container: image, command and args.
fn describe_task_template(task: &TaskSpec, line: &mut impl FnMut(&str, &str)) {
    for c in &task.containers {
        line("Image", c.image.as_deref().unwrap_or("-"));
        // As JSON arrays: an argument may hold spaces or lines (a script).
        let words = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
        if !c.command.is_empty() {
            line("Command", &words(&c.command));
        }
        if !c.args.is_empty() {
            line("Args", &words(&c.args));
        }
        let env: Vec<String> = c
            .env
            .iter()
            .map(|e| {
                let name = e.name.clone().unwrap_or_default();
                match (&e.value, &e.value_from) {
                    (Some(v), _) => format!("{name}={v}"),
                    (None, Some(_)) => format!("{name} (from a Secret or ConfigMap)"),
                    (None, None) => name,
                }
            })
            .collect();
        if !env.is_empty() {
            line("Env", &env.join(", "));
        }
    }
    line("Max retries", &task.retries().to_string());
    line("Task timeout", &format!("{}s", task.timeout().as_secs()));
}

/// `skiff describe job`: its template, schedule, and its recent executions.
pub fn describe_job(j: &Job, executions: &[Execution]) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| out.push_str(&format!("{:<16}{v}\n", format!("{k}:")));
    line("Name", &j.metadata.name);
    line("Namespace", &j.metadata.namespace);
    line("Age", &age(&j.metadata.creation_timestamp));
    line("Generation", &j.metadata.generation.to_string());
    line("Labels", &key_values(&j.metadata.labels));
    line("Annotations", &key_values(&j.metadata.annotations));
    let exec = j.execution();
    let tasks = exec.task_count.unwrap_or(1);
    line("Tasks", &tasks.to_string());
    line(
        "Parallelism",
        &match exec.parallelism.unwrap_or(0) {
            0 => format!("{tasks} (all at once)"),
            p => p.to_string(),
        },
    );
    let task = exec.template.and_then(|t| t.spec).unwrap_or_default();
    describe_task_template(&task, &mut line);
    line("Schedule", &schedule_of(j));
    if let Some(s) = &j.status.schedule {
        line("Concurrency", &s.concurrency_policy);
    }
    if let Some(t) = &j.status.next_schedule_time {
        line("Next run", t);
    }
    if let Some(t) = &j.status.last_schedule_time {
        line("Last scheduled", t);
    }
    if j.status.missed_runs > 0 {
        line("Missed runs", &j.status.missed_runs.to_string());
    }
    if let Some(why) = &j.status.last_skip {
        line("Last skipped", why);
    }
    line("Executions", &j.status.execution_count.to_string());
    out.push_str("\nRecent executions:\n");
    if executions.is_empty() {
        out.push_str("  none (`skiff jobs execute JOB` runs one)\n");
    } else {
        for l in executions_table(&executions[..executions.len().min(10)])
            .to_string()
            .lines()
        {
            out.push_str(&format!("  {}\n", l.trim_end()));
        }
    }
    out.push_str(&conditions(&j.status.conditions));
    out
}

/// What an attempt's message adds to its reason and exit code (nothing for an exit).
fn attempt_message(a: &AttemptResult) -> String {
    match a.reason.as_str() {
        "Completed" | "Error" => String::new(),
        _ => a.message.clone(),
    }
}

/// `skiff describe execution`: its conditions, counts, and each task with its last attempt.
pub fn describe_execution(e: &Execution) -> String {
    let mut out = String::new();
    let s = &e.status;
    let mut line = |k: &str, v: &str| out.push_str(&format!("{:<16}{v}\n", format!("{k}:")));
    line("Name", &e.metadata.name);
    line("Namespace", &e.metadata.namespace);
    line("Job", e.job());
    line("Status", completion_word(e.completion_status()));
    if let Some(by) = e.metadata.annotations.get(STARTED_BY_ANNOTATION) {
        line("Started by", by);
    }
    line(
        "Created",
        &format!(
            "{} ({} ago)",
            e.metadata.creation_timestamp,
            age(&e.metadata.creation_timestamp)
        ),
    );
    line("Started", s.start_time.as_deref().unwrap_or("-"));
    line("Completed", s.completion_time.as_deref().unwrap_or("-"));
    line(
        "Tasks",
        &format!("{} ({} at once)", e.spec.task_count, e.spec.parallelism),
    );
    line(
        "Counts",
        &format!(
            "{} running, {} succeeded, {} failed, {} cancelled, {} retried",
            s.running_count, s.succeeded_count, s.failed_count, s.cancelled_count, s.retried_count
        ),
    );
    if e.spec.cancelled {
        line("Cancelled", "yes (`skiff executions cancel`)");
    }
    describe_task_template(&e.spec.task(), &mut line);
    if !s.images.is_empty() {
        line("Images", &s.images.join(", "));
    }
    if let Some(uri) = &s.log_uri {
        line("Logs", uri);
    }
    out.push_str(&conditions(&s.conditions));
    out.push_str("\nTasks:\n");
    let mut t = table(&[
        "INDEX",
        "STATE",
        "ATTEMPTS",
        "EXIT CODE",
        "REASON",
        "INSTANCE",
        "MESSAGE",
    ]);
    for task in &s.tasks {
        let started = task.attempts.len() + usize::from(task.state == TaskState::Running);
        let last = task.last_attempt_result.as_ref();
        t.add_row(vec![
            task.index.to_string(),
            task_word(task.state).to_owned(),
            started.to_string(),
            last.and_then(|r| r.exit_code)
                .map_or_else(|| "-".into(), |c| c.to_string()),
            last.map_or_else(|| "-".into(), |r| r.reason.clone()),
            task.instance.clone().unwrap_or_else(|| "-".into()),
            last.map(attempt_message).unwrap_or_default(),
        ]);
    }
    for l in t.to_string().lines() {
        out.push_str(&format!("  {}\n", l.trim_end()));
    }
    // Retried tasks: every attempt, so a flaky task shows how each try ended.
    let retried: Vec<_> = s.tasks.iter().filter(|t| t.attempts.len() > 1).collect();
    if !retried.is_empty() {
        out.push_str("\nAttempts of retried tasks:\n");
        for task in retried {
            for a in &task.attempts {
                out.push_str(&format!(
                    "  task {} attempt {}: {}{}{}\n",
                    task.index,
                    a.attempt,
                    a.reason,
                    a.exit_code
                        .map(|c| format!(" (exit code {c})"))
                        .unwrap_or_default(),
                    match attempt_message(a) {
                        m if m.is_empty() => m,
                        m => format!(": {m}"),
                    }
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start-up note gives the total and each phase once ready, the phases so far
    /// before.
    #[test]
    fn startup_note_shows_the_phases() {
        let mut p = StartupPhases {
            scheduled_unix_nanos: 1,
            image_ms: 3.2,
            container_ms: 240.4,
            ready_ms: None,
        };
        let fresh = skiff_api::wire::StartKind::Fresh;
        assert_eq!(
            startup_note("hello-00001-abcde", &p, fresh),
            "  hello-00001-abcde: starting fresh (image 3.2ms, container 240ms, not ready yet)"
        );
        p.ready_ms = Some(568.9);
        assert_eq!(
            startup_note("hello-00001-abcde", &p, fresh),
            "  hello-00001-abcde: started fresh in 812ms (image 3.2ms, container 240ms, ready 569ms)"
        );
        let parked = StartupPhases {
            scheduled_unix_nanos: 1,
            image_ms: 0.02,
            container_ms: 1.1,
            ready_ms: Some(5.4),
        };
        assert_eq!(
            startup_note(
                "hello-00001-abcde",
                &parked,
                skiff_api::wire::StartKind::Parked
            ),
            "  hello-00001-abcde: started parked in 6.5ms (image 0.0ms, container 1.1ms, ready 5.4ms)"
        );
    }
}
