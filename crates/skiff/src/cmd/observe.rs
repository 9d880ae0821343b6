//! `skiff top`, `skiff metrics SERVICE`, `skiff slo [SERVICE|rules]` and `skiff alerts`:
//! what the daemon's own history says about Services, with no Prometheus.

use serde_json::Value;

use crate::connect::ConnectArgs;
use crate::exit::{Exit, FAILURE, OK};
use crate::output::{self, Format};

/// Every Service now: requests per second, success, p50/p95/p99, instances, cold-start
/// rate and cost per hour, over the last minute.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// A Service's requests, errors, latency, cold starts, instances and cost over time.
#[derive(Debug, clap::Args)]
pub struct MetricsArgs {
    /// The Service.
    pub service: String,
    /// From when: a duration (`1h`, `30m`, `7d`) or an RFC 3339 time.
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// Seconds per row (a multiple of 10) [default: what fits the range in 60 rows].
    #[arg(long)]
    pub step: Option<i64>,
    /// The namespace [default: default].
    #[arg(short = 'n', long, env = "SKIFF_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// SLOs: each objective's SLI, error budget left and burn rates (all Services, or one);
/// `skiff slo rules` prints them as Prometheus rules.
#[derive(Debug, clap::Args)]
pub struct SloArgs {
    /// A Service, or `rules` for the Prometheus rules of every SLO.
    pub service: Option<String>,
    /// The namespace [default: default].
    #[arg(short = 'n', long, env = "SKIFF_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The alerts firing now (SLO burn rates, cost budgets), with severity and since when.
#[derive(Debug, clap::Args)]
pub struct AlertsArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{:.1}ms", s * 1000.0))
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("{:.2}%", r * 100.0))
}

/// Runs `skiff top`.
pub async fn top(args: TopArgs) -> Result<i32, Exit> {
    let top = args.connect.client()?.top().await?;
    if args.output != Format::Table {
        print!("{}", output::render(&top, args.output)?);
        return Ok(OK);
    }
    let mut t = output::table(&[
        "NAMESPACE",
        "SERVICE",
        "RPS",
        "SUCCESS",
        "P50",
        "P95",
        "P99",
        "INSTANCES",
        "COLD",
        "COST/H",
    ]);
    for r in &top.services {
        t.add_row(vec![
            r.namespace.clone(),
            r.service.clone(),
            format!("{:.2}", r.rps),
            pct(r.success),
            ms(r.p50),
            ms(r.p95),
            ms(r.p99),
            r.instances.to_string(),
            pct(r.cold_start_rate),
            format!("${:.6}", r.cost_per_hour),
        ]);
    }
    output::print_table(&t);
    Ok(OK)
}

/// Runs `skiff metrics`.
pub async fn metrics(args: MetricsArgs) -> Result<i32, Exit> {
    let m = args
        .connect
        .client()?
        .service_metrics(&args.namespace, &args.service, &args.since, args.step)
        .await?;
    if args.output != Format::Table {
        print!("{}", output::render(&m, args.output)?);
        return Ok(OK);
    }
    let mut t = output::table(&[
        "TIME",
        "REQUESTS",
        "ERRORS",
        "P50",
        "P95",
        "P99",
        "COLD",
        "THROTTLED",
        "INSTANCES",
        "CPU",
        "COST",
    ]);
    for p in &m.points {
        t.add_row(vec![
            p.at.clone(),
            p.requests.to_string(),
            p.errors.to_string(),
            ms(p.p50),
            ms(p.p95),
            ms(p.p99),
            p.cold_starts.to_string(),
            p.throttled.to_string(),
            p.instances.to_string(),
            format!("{:.2}s", p.cpu_seconds),
            format!("${:.8}", p.cost),
        ]);
    }
    output::print_table(&t);
    Ok(OK)
}

/// The rows of one Service's SLO report: objective, SLI, budget left, and each condition's
/// burn rates.
fn slo_rows(s: &Value, t: &mut comfy_table::Table) {
    let name = format!(
        "{}/{}",
        s["namespace"].as_str().unwrap_or(""),
        s["service"].as_str().unwrap_or("")
    );
    for o in s["report"]["objectives"].as_array().into_iter().flatten() {
        let burns: Vec<String> = o["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                format!(
                    "{} {:.1}x/{}s {:.1}x/{}s (>{}){}",
                    c["severity"].as_str().unwrap_or(""),
                    c["long"]["burnRate"].as_f64().unwrap_or(0.0),
                    c["long"]["windowSeconds"],
                    c["short"]["burnRate"].as_f64().unwrap_or(0.0),
                    c["short"]["windowSeconds"],
                    c["long"]["threshold"],
                    if c["holds"].as_bool() == Some(true) {
                        " FIRING"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        t.add_row(vec![
            name.clone(),
            o["kind"].as_str().unwrap_or("").to_owned(),
            format!("{:.3}%", o["objective"].as_f64().unwrap_or(0.0) * 100.0),
            pct(o["sli"].as_f64()),
            format!(
                "{:.1}%",
                o["budgetRemaining"].as_f64().unwrap_or(1.0) * 100.0
            ),
            burns.join("; "),
        ]);
    }
    if let Some(b) = s.get("budget").filter(|b| !b.is_null()) {
        let stopped = if b["scaleUpStopped"].as_bool() == Some(true) {
            let until = b["periodEnd"]
                .as_i64()
                .and_then(|t| jiff::Timestamp::from_second(t).ok())
                .map_or_else(|| "the period ends".to_owned(), |t| t.to_string());
            format!("SPENT: scale-up stopped until {until} or a higher budget")
        } else {
            String::new()
        };
        t.add_row(vec![
            name,
            "budget".into(),
            format!("${}/{}", b["dollars"], b["per"].as_str().unwrap_or("")),
            "-".into(),
            format!("${:.6} spent", b["spent"].as_f64().unwrap_or(0.0)),
            stopped,
        ]);
    }
}

/// Runs `skiff slo`.
pub async fn slo(args: SloArgs) -> Result<i32, Exit> {
    let client = args.connect.client()?;
    if args.service.as_deref() == Some("rules") {
        print!("{}", client.slo_rules().await?);
        return Ok(OK);
    }
    let mut services = client.slos().await?.services;
    if let Some(svc) = &args.service {
        services
            .retain(|s| s["service"] == svc.as_str() && s["namespace"] == args.namespace.as_str());
        if services.is_empty() {
            return Err(Exit::new(
                FAILURE,
                format!(
                    "service `{svc}` in namespace `{}` has no skiff.dev/slo-* or skiff.dev/budget annotation (or was not evaluated yet: SLOs are evaluated every 10 s)",
                    args.namespace
                ),
            ));
        }
    }
    if args.output != Format::Table {
        print!("{}", output::render(&services, args.output)?);
        return Ok(OK);
    }
    let mut t = output::table(&[
        "SERVICE",
        "OBJECTIVE",
        "TARGET",
        "SLI",
        "BUDGET LEFT",
        "BURN RATES (long/short)",
    ]);
    for s in &services {
        slo_rows(s, &mut t);
    }
    output::print_table(&t);
    Ok(OK)
}

/// Runs `skiff alerts`.
pub async fn alerts(args: AlertsArgs) -> Result<i32, Exit> {
    let list = args.connect.client()?.alerts().await?;
    if args.output != Format::Table {
        print!("{}", output::render(&list, args.output)?);
        return Ok(OK);
    }
    if list.alerts.is_empty() {
        println!("no alerts firing");
        return Ok(OK);
    }
    let mut t = output::table(&["ALERT", "SEVERITY", "NAMESPACE", "SERVICE", "SINCE"]);
    for a in &list.alerts {
        t.add_row(vec![
            a.name.clone(),
            a.severity.clone(),
            a.namespace.clone(),
            a.service.clone(),
            a.since.clone(),
        ]);
    }
    output::print_table(&t);
    Ok(OK)
}

/// Prints a one-time login link to the dashboard; with `--open`, opens it in a browser.
#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// Open the link in a browser (`$BROWSER`, else `xdg-open`) when one is there.
    #[arg(long)]
    pub open: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs `skiff dashboard`.
pub async fn dashboard(args: DashboardArgs) -> Result<i32, Exit> {
    let client = args.connect.client()?;
    let login = client.dashboard_login().await?;
    let url = format!("{}{}", client.server().trim_end_matches('/'), login.path);
    println!("{url}");
    eprintln!(
        "Open this link to log in to the dashboard. It works once, until {}, and opens a session in that browser.",
        login.expires_at
    );
    if args.open {
        open_browser(&url);
    }
    Ok(OK)
}

/// Opens `url` with `$BROWSER` or `xdg-open` when a display is there; says so when not.
fn open_browser(url: &str) {
    let graphical =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    let opener = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .or_else(|| graphical.then(|| "xdg-open".to_owned()));
    let Some(opener) = opener else {
        eprintln!(
            "No browser here (no $BROWSER, no display): open the link on a machine that reaches this address."
        );
        return;
    };
    match std::process::Command::new(&opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(_) => eprintln!("Opened with {opener}."),
        Err(e) => eprintln!("Could not run {opener} ({e}): open the link yourself."),
    }
}
