//! The dashboard under `/ui/`: login by one-time code, a session cookie, and the three views,
//! their figures gathered with the same functions the API answers with and rendered by
//! `skiff-ui`.
//!
//! # Sessions
//! `POST /api/v1/dashboard/login` (with the API token) makes a code; `GET /ui/login?code=`
//! trades it, once and within 5 minutes, for a session whose token travels only in an
//! `HttpOnly; SameSite=Strict` cookie scoped to `/ui`. Every other `/ui` page needs the
//! session (401 and the login page without it), refuses requests a browser marks as coming
//! from another origin (`Sec-Fetch-Site`), and the one state-changing call (log out) also needs an
//! `Origin` of this host. The code's query string is never logged (the API's access log
//! keeps paths only).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use askama::Template;
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use skiff_api::wire::{DashboardLogin, InstanceView, LogLine, RequestLogLine};
use skiff_api::{ErrorCode, object::ConditionStatus};
use skiff_control::telemetry::StartupMetrics;
use skiff_history::ServiceKey;
use skiff_ui::auth::{LoginError, Logins};
use skiff_ui::page::{LoginPage, Page, Range};
use skiff_ui::views::{
    self, Budget, Context, DebugInput, Revision, ServiceHistory, ServiceNow, ServiceSlo, Startup,
    Summary,
};

use crate::api::{ApiError, ApiState};

/// The session cookie.
const COOKIE: &str = "skiff_session";
/// Requests read from a revision's request log for the debug view.
const RECENT_REQUESTS: usize = 200;
/// Log lines read for the debug view.
const RECENT_LOGS: usize = 100;
/// Bytes read from the end of a log file at most, per file.
const TAIL_BYTES: u64 = 512 * 1024;
/// A request slower than this is listed as slow when its Service has no latency SLO.
const DEFAULT_SLOW_SECONDS: f64 = 1.0;

/// The dashboard's state.
pub struct Ui {
    logins: Mutex<Logins>,
    startups: Option<Arc<StartupMetrics>>,
    traces: Option<String>,
}

impl Ui {
    /// A dashboard showing the recent starts of `startups`, saying traces go to `traces`.
    pub fn new(startups: Option<Arc<StartupMetrics>>, traces: Option<String>) -> Arc<Ui> {
        Arc::new(Ui {
            logins: Mutex::default(),
            startups,
            traces,
        })
    }

    fn logins(&self) -> std::sync::MutexGuard<'_, Logins> {
        self.logins.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Makes a one-time login code for the dashboard (`skiff dashboard` prints it as a URL).
#[utoipa::path(post, path = "/api/v1/dashboard/login", tag = "dashboard",
    responses((status = 200, body = DashboardLogin)))]
pub async fn create_login(State(state): State<ApiState>) -> Json<DashboardLogin> {
    let (code, expires) = state.ui.logins().issue_code(Instant::now());
    let left = expires.saturating_duration_since(Instant::now());
    let expires_at = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::try_from(left).unwrap_or_default())
        .unwrap_or_else(|_| jiff::Timestamp::now());
    Json(DashboardLogin {
        path: format!("/ui/login?code={code}"),
        expires_at: expires_at.to_string(),
    })
}

/// The `/ui` routes.
pub fn routes(state: ApiState) -> Router<ApiState> {
    let pages = Router::new()
        .route("/ui/", get(executive))
        .route("/ui/oncall", get(oncall))
        .route("/ui/debug", get(debug_index))
        .route("/ui/services/{namespace}/{name}", get(debug))
        .route("/ui/services/{namespace}/{name}/requests/{id}", get(trail))
        .route("/ui/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(state, session));
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/login", get(login))
        .route("/ui/assets/{file}", get(asset))
        .merge(pages)
        .layer(middleware::from_fn(headers))
}

/// What every `/ui` answer carries: no framing, no sniffing, no referrer (the login URL
/// holds a code), only this origin's scripts and styles, nothing cached but assets.
async fn headers(request: Request, next: Next) -> Response {
    let asset = request.uri().path().starts_with("/ui/assets/");
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// Whether the browser says the request comes from another origin: another site, or
/// another origin of this one (`same-site`: a Service's page on `*.localhost` is the same
/// site as a dashboard opened on `localhost`, and cookies do not tell ports apart).
fn foreign(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !matches!(v, "same-origin" | "none"))
}

/// Whether a state-changing request comes from this origin: its `Origin` names this host
/// (browsers send it on every POST), or, without one, the browser says same-origin.
fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(origin) => host.is_some_and(|h| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(h)
        }),
        None => headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "same-origin"),
    }
}

fn login_page(status: StatusCode, message: impl Into<String>) -> Response {
    let page = LoginPage {
        message: message.into(),
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(_) => (status, "run `skiff dashboard` to log in\n").into_response(),
    }
}

/// Lets a request through with a session; otherwise 401 and the login page (403 for a
/// request a browser says comes from another origin, or a state change whose `Origin` is
/// not this host).
async fn session(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if foreign(headers) || (request.method() != Method::GET && !same_origin(headers)) {
        return login_page(
            StatusCode::FORBIDDEN,
            "This request came from another site; the dashboard answers only its own pages.",
        );
    }
    let valid =
        cookie_token(headers).is_some_and(|t| state.ui.logins().is_valid(t, Instant::now()));
    if !valid {
        return login_page(
            StatusCode::UNAUTHORIZED,
            "You are not logged in, or your session has ended.",
        );
    }
    next.run(request).await
}

#[derive(Debug, Deserialize)]
struct LoginParams {
    code: Option<String>,
}

async fn login(State(state): State<ApiState>, Query(p): Query<LoginParams>) -> Response {
    let Some(code) = p.code else {
        return login_page(StatusCode::UNAUTHORIZED, "This login link has no code.");
    };
    match state.ui.logins().redeem(&code, Instant::now()) {
        Ok(token) => {
            let max_age = skiff_ui::auth::SESSION_TTL.as_secs();
            let cookie =
                format!("{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}");
            let mut response = Redirect::to("/ui/").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
            response
        }
        Err(e @ (LoginError::Unknown | LoginError::Used | LoginError::Expired)) => {
            login_page(StatusCode::UNAUTHORIZED, e.to_string())
        }
    }
}

async fn logout(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Some(t) = cookie_token(&headers) {
        state.ui.logins().logout(t);
    }
    let mut response = login_page(StatusCode::OK, "You are logged out.");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("skiff_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

async fn asset(Path(file): Path<String>) -> Response {
    match skiff_ui::Assets::get(&file) {
        Some(f) => (
            [
                (header::CONTENT_TYPE, skiff_ui::content_type(&file)),
                (header::CACHE_CONTROL, "max-age=300"),
            ],
            f.data.into_owned(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

/// A page's answer, or an error shown as a page.
fn render(page: Page) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering the page failed: {e}\n"),
        )
            .into_response(),
    }
}

/// An error while gathering a page's figures, shown with the API's message.
struct UiError(ApiError);

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        UiError(e)
    }
}

impl From<skiff_control::controller::ControllerError> for UiError {
    fn from(e: skiff_control::controller::ControllerError) -> Self {
        UiError(e.into())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let mut page = Page::new(
            skiff_ui::page::View::Debug,
            format!("{}: {}", status.as_u16(), self.0.message()),
            Range::H1,
            views::rfc3339(jiff::Timestamp::now().as_second()),
        );
        page.live_seconds = 0;
        let mut response = render(page);
        *response.status_mut() = status;
        response
    }
}

#[derive(Debug, Deserialize)]
struct ViewParams {
    range: Option<String>,
    revision: Option<String>,
}

fn context(p: &ViewParams) -> Result<Context, UiError> {
    let range = Range::parse(p.range.as_deref()).ok_or_else(|| {
        UiError(ApiError::new(
            ErrorCode::BadRequest,
            "range: one of 15m, 1h, 6h, 24h, 7d, 30d",
        ))
    })?;
    Ok(Context {
        range,
        now: jiff::Timestamp::now().as_second(),
    })
}

fn unavailable(e: impl std::fmt::Display) -> UiError {
    UiError(ApiError::new(ErrorCode::Unavailable, e.to_string()))
}

/// Each of `services`' history over the range (the metrics API's points), once per step of
/// `steps`, each with the range added up (summed once per Service).
async fn histories(
    state: &ApiState,
    ctx: Context,
    services: Vec<(String, String)>,
    revision: Option<String>,
    steps: &[i64],
) -> Result<Vec<Vec<ServiceHistory>>, UiError> {
    let (from, to) = (ctx.from(), ctx.now + 1);
    let asked = steps.to_vec();
    let rows = state
        .history
        .with(move |h| {
            let mut out = Vec::new();
            for (namespace, service) in services {
                let key = ServiceKey::new(&namespace, &service);
                let sum = h.sum(&key, revision.as_deref(), from, to)?;
                let ranges = asked
                    .iter()
                    .map(|step| h.range(&key, revision.as_deref(), from, to, *step))
                    .collect::<Result<Vec<_>, _>>()?;
                out.push((namespace, service, sum, ranges));
            }
            Ok(out)
        })
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    let prices = state.slo.prices();
    let mut by_step: Vec<Vec<ServiceHistory>> = steps.iter().map(|_| Vec::new()).collect();
    for (namespace, service, s, ranges) in rows {
        let summary = Summary {
            requests: s.total(),
            errors: s.errors(),
            cold_starts: s.cold_starts,
            throttled: s.throttled,
            p50: s.quantile(0.5),
            p95: s.quantile(0.95),
            p99: s.quantile(0.99),
            cpu_seconds: s.cpu_used_seconds,
            cost: crate::api::observe::cost(&s, prices),
        };
        for ((out, step), range) in by_step.iter_mut().zip(steps).zip(ranges) {
            out.push(ServiceHistory {
                namespace: namespace.clone(),
                service: service.clone(),
                summary: summary.clone(),
                step: *step,
                points: range
                    .iter()
                    .map(|(t, s)| crate::api::observe::point(*t, s, prices))
                    .collect(),
            });
        }
    }
    Ok(by_step)
}

/// Each of `services`' history over the range at the range's step.
async fn histories_at_step(
    state: &ApiState,
    ctx: Context,
    services: Vec<(String, String)>,
    revision: Option<String>,
) -> Result<Vec<ServiceHistory>, UiError> {
    let mut by_step = histories(state, ctx, services, revision, &[ctx.range.step()]).await?;
    Ok(by_step.pop().unwrap_or_default())
}

/// The `(namespace, name)` of each Service.
fn names(services: &[ServiceNow]) -> Vec<(String, String)> {
    services
        .iter()
        .map(|s| (s.namespace.clone(), s.service.clone()))
        .collect()
}

async fn service_names(state: &ApiState) -> Result<Vec<(String, String)>, UiError> {
    Ok(state
        .controller
        .list_services(None)
        .await?
        .into_iter()
        .map(|s| (s.metadata.namespace, s.metadata.name))
        .collect())
}

fn slos(state: &ApiState) -> Vec<ServiceSlo> {
    state
        .slo
        .services(None)
        .into_iter()
        .map(|s| ServiceSlo {
            namespace: s.namespace,
            service: s.service,
            report: s.report,
            budget: s.budget.map(|b| Budget {
                dollars: b.dollars,
                per: b.per.to_owned(),
                spent: b.spent,
                period_end: b.period_end,
                scale_up_stopped: b.scale_up_stopped,
            }),
        })
        .collect()
}

fn ready_of(c: Option<&skiff_api::object::Condition>) -> (String, Option<String>, Option<String>) {
    match c {
        Some(c) => (c.status.to_string(), c.reason.clone(), c.message.clone()),
        None => (ConditionStatus::Unknown.to_string(), None, None),
    }
}

async fn services_now(state: &ApiState) -> Result<Vec<ServiceNow>, UiError> {
    let mut out = Vec::new();
    for s in state.controller.list_services(None).await? {
        let (ns, name) = (s.metadata.namespace.clone(), s.metadata.name.clone());
        let scale = state.instances.scale_status(&ns, &name).await.ok();
        let (status, reason, _) = ready_of(s.condition("Ready"));
        out.push(ServiceNow {
            namespace: ns,
            service: name,
            url: s.status.url.clone(),
            ready: (status, reason),
            scale,
        });
    }
    Ok(out)
}

fn revision_view(r: &skiff_api::object::Revision) -> Revision {
    Revision {
        namespace: r.metadata.namespace.clone(),
        service: r.service_name().unwrap_or_default().to_owned(),
        name: r.metadata.name.clone(),
        created: r.metadata.creation_timestamp.clone(),
        ready: ready_of(r.condition("Ready")),
        images: r
            .spec
            .containers
            .iter()
            .filter_map(|c| c.image.clone())
            .collect(),
    }
}

async fn executive(
    State(state): State<ApiState>,
    Query(p): Query<ViewParams>,
) -> Result<Response, UiError> {
    let ctx = context(&p)?;
    let names = service_names(&state).await?;
    let steps = [ctx.range.step(), ctx.range.cost_step()];
    let mut by_step = histories(&state, ctx, names, None, &steps)
        .await?
        .into_iter();
    let (h, costs) = (
        by_step.next().unwrap_or_default(),
        by_step.next().unwrap_or_default(),
    );
    Ok(render(views::executive(
        ctx,
        &h,
        &costs,
        &slos(&state),
        &state.slo.firing(),
    )))
}

async fn oncall(
    State(state): State<ApiState>,
    Query(p): Query<ViewParams>,
) -> Result<Response, UiError> {
    let ctx = context(&p)?;
    let services = services_now(&state).await?;
    let h = histories_at_step(&state, ctx, names(&services), None).await?;
    let revisions: Vec<Revision> = state
        .controller
        .list_revisions(None, None)
        .await?
        .iter()
        .map(revision_view)
        .collect();
    let mut page = views::oncall(
        ctx,
        &h,
        &slos(&state),
        &state.slo.firing(),
        &services,
        &revisions,
    );
    page.sections
        .push(views::rollout_section(&rollout_rows(&state).await?));
    page.sections.extend(views::work_sections(
        &job_rows(&state).await?,
        &delivery_rows(&state),
    ));
    Ok(render(page))
}

/// Rollouts in progress, and Services whose latest revision stands rolled back.
async fn rollout_rows(state: &ApiState) -> Result<Vec<views::RolloutRow>, UiError> {
    let mut out = Vec::new();
    for s in state.controller.list_services(None).await? {
        let Some(r) = &s.status.rollout else { continue };
        let cond = s
            .status
            .conditions
            .iter()
            .find(|c| c.condition_type == skiff_control::status::conditions::ROLLED_OUT);
        let (ns, name) = (s.metadata.namespace.clone(), s.metadata.name.clone());
        if let Some(p) = &r.current {
            let detail = match state.rollouts.live(&s) {
                Some(l) => format!(
                    "new {} req, 5xx {:.1}%{} | stable {} req, 5xx {:.1}%{}",
                    l.canary.requests,
                    l.canary.error_rate() * 100.0,
                    l.canary
                        .p95_ms
                        .map(|p| format!(", p95 {p:.1} ms"))
                        .unwrap_or_default(),
                    l.stable.requests,
                    l.stable.error_rate() * 100.0,
                    l.stable
                        .p95_ms
                        .map(|p| format!(", p95 {p:.1} ms"))
                        .unwrap_or_default(),
                ),
                None => "measuring".into(),
            };
            out.push(views::RolloutRow {
                namespace: ns,
                service: name,
                revision: p.revision.clone(),
                from: p.from.clone(),
                state: if p.paused { "paused" } else { "rolling out" }.into(),
                failed: false,
                step: Some(format!(
                    "{} of {} ({}%)",
                    p.step + 1,
                    p.policy.steps.len(),
                    p.percent()
                )),
                detail,
            });
        } else if let Some(c) =
            cond.filter(|c| c.status == skiff_api::object::ConditionStatus::False)
        {
            let reason = c.reason.clone().unwrap_or_default();
            out.push(views::RolloutRow {
                namespace: ns,
                service: name,
                revision: r.held_revision.clone().unwrap_or_default(),
                from: r.stable_revision.clone().unwrap_or_default(),
                failed: reason == skiff_control::status::reasons::ROLLOUT_FAILED,
                state: reason,
                step: None,
                detail: r
                    .history
                    .first()
                    .map(|h| h.message.clone())
                    .unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// Every Job, with its executions running now, for the on-call view.
async fn job_rows(state: &ApiState) -> Result<Vec<views::JobRow>, UiError> {
    let mut out = Vec::new();
    for j in state.jobs.list(None).await? {
        let (ns, name) = (&j.metadata.namespace, &j.metadata.name);
        let running = state
            .jobs
            .executions(ns, Some(name))
            .await?
            .iter()
            .filter(|e| !e.is_done())
            .count() as u64;
        let s = &j.status;
        out.push(views::JobRow {
            namespace: ns.clone(),
            name: name.clone(),
            executions: s.execution_count,
            latest: s.latest_created_execution.as_ref().map(|r| {
                (
                    r.name.clone(),
                    serde_json::to_value(r.completion_status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                )
            }),
            schedule: s.schedule.as_ref().map(|s| match &s.timezone {
                Some(tz) => format!("{} ({tz})", s.schedule),
                None => s.schedule.clone(),
            }),
            next_run: s.next_schedule_time.clone(),
            missed_runs: s.missed_runs,
            running,
        });
    }
    Ok(out)
}

/// Every Trigger's and PingSource's delivery figures, for the on-call view.
fn delivery_rows(state: &ApiState) -> Vec<views::DeliveryRow> {
    let Some(e) = &state.eventing else {
        return Vec::new();
    };
    skiff_control::dispatch::figures(e)
        .into_iter()
        .map(|f| views::DeliveryRow {
            subscription: f.subscription,
            target: f.target,
            depth: f.depth,
            delivered: f.delivered,
            retried: f.retried,
            dead_lettered: f.dead_lettered,
        })
        .collect()
}

async fn debug_index(
    State(state): State<ApiState>,
    Query(p): Query<ViewParams>,
) -> Result<Response, UiError> {
    let ctx = context(&p)?;
    let services = services_now(&state).await?;
    let h = histories_at_step(&state, ctx, names(&services), None).await?;
    Ok(render(views::debug_index(ctx, &services, &h)))
}

/// The last `max` lines of `files` (oldest first) that parse as `T`, newest first, reading at
/// most [`TAIL_BYTES`] from the end of each file, newest file first. Blocking.
fn tail<T: serde::de::DeserializeOwned>(files: &[PathBuf], max: usize) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for f in files.iter().rev() {
        let Ok(mut file) = std::fs::File::open(f) else {
            continue;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(TAIL_BYTES);
        if file.seek(SeekFrom::Start(start)).is_err() {
            continue;
        }
        let mut buf = Vec::new();
        if file.take(TAIL_BYTES).read_to_end(&mut buf).is_err() {
            continue;
        }
        let text = String::from_utf8_lossy(&buf);
        let mut lines: Vec<&str> = text.lines().collect();
        if start > 0 && !lines.is_empty() {
            // The first line is cut.
            lines.remove(0);
        }
        for l in lines.iter().rev() {
            if out.len() == max {
                return out;
            }
            if let Ok(v) = serde_json::from_str(l) {
                out.push(v);
            }
        }
        if start > 0 {
            break;
        }
    }
    out
}

fn by_time_desc<T>(items: &mut [T], ts: impl Fn(&T) -> &str) {
    items.sort_by(|a, b| ts(b).cmp(ts(a)));
}

async fn debug(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    Query(p): Query<ViewParams>,
) -> Result<Response, UiError> {
    let ctx = context(&p)?;
    let svc = state.controller.get_service(&namespace, &name).await?;
    let mut revisions: Vec<Revision> = state
        .controller
        .list_revisions(Some(&namespace), Some(&name))
        .await?
        .iter()
        .map(revision_view)
        .collect();
    revisions.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.name.cmp(&a.name)));
    if let Some(r) = &p.revision
        && !revisions.iter().any(|x| &x.name == r)
    {
        return Err(UiError(ApiError::new(
            ErrorCode::NotFound,
            format!("revision `{r}` is not a revision of `{name}`"),
        )));
    }
    let history = histories_at_step(
        &state,
        ctx,
        vec![(namespace.clone(), name.clone())],
        p.revision.clone(),
    )
    .await?
    .pop()
    .unwrap_or_default();
    let scale = state.instances.scale_status(&namespace, &name).await.ok();
    let instances: Vec<InstanceView> = state.instances.instances_of(&namespace, &name);
    let dir = state.instances.runtime().log_dir();
    let names: Vec<String> = match &p.revision {
        Some(r) => vec![r.clone()],
        None => revisions.iter().map(|r| r.name.clone()).collect(),
    };
    let (requests, logs) = tokio::task::spawn_blocking({
        let namespace = namespace.clone();
        move || read_recent(&dir, &namespace, &names)
    })
    .await
    .map_err(unavailable)?;
    let report = state
        .slo
        .services(Some(&namespace))
        .into_iter()
        .find(|s| s.service == name)
        .and_then(|s| s.report);
    let slow_seconds = report
        .as_ref()
        .and_then(|r| r.objectives.iter().find_map(|o| o.threshold_seconds))
        .unwrap_or(DEFAULT_SLOW_SECONDS);
    let pull_failures = revisions
        .iter()
        .filter(|r| r.ready.1.as_deref() == Some("ImagePullFailed"))
        .map(|r| (r.name.clone(), r.ready.2.clone().unwrap_or_default()))
        .collect();
    let startups = state
        .ui
        .startups
        .as_ref()
        .map(|s| s.recent(&namespace, &name))
        .unwrap_or_default()
        .into_iter()
        .map(|s| Startup {
            instance: s.instance,
            revision: s.revision,
            at: i64::try_from(s.phases.scheduled_unix_nanos / 1_000_000_000).unwrap_or(0),
            image_ms: s.phases.image_ms,
            container_ms: s.phases.container_ms,
            ready_ms: s.phases.ready_ms,
        })
        .collect();
    let (status, reason, _) = ready_of(svc.condition("Ready"));
    let input = DebugInput {
        service: ServiceNow {
            namespace,
            service: name,
            url: svc.status.url.clone(),
            ready: (status, reason),
            scale,
        },
        revisions,
        selected: p.revision,
        history,
        instances,
        startups,
        requests,
        logs,
        slow_seconds,
        traces: state.ui.traces.clone(),
        pull_failures,
    };
    Ok(render(views::debug(ctx, &input)))
}

/// The recent requests and log lines of `revisions`, newest first. Blocking.
fn read_recent(
    dir: &FsPath,
    namespace: &str,
    revisions: &[String],
) -> (Vec<RequestLogLine>, Vec<LogLine>) {
    let mut requests: Vec<RequestLogLine> = revisions
        .iter()
        .flat_map(|r| {
            tail(
                &skiff_requests::log::files(dir, namespace, r),
                RECENT_REQUESTS,
            )
        })
        .collect();
    by_time_desc(&mut requests, |l| &l.ts);
    requests.truncate(RECENT_REQUESTS);
    let mut logs: Vec<LogLine> = revisions
        .iter()
        .flat_map(|r| {
            tail(
                &skiff_runtime::logs::files_of(dir, namespace, r, 16),
                RECENT_LOGS,
            )
        })
        .collect();
    by_time_desc(&mut logs, |l| &l.ts);
    logs.truncate(RECENT_LOGS);
    (requests, logs)
}

async fn trail(
    State(state): State<ApiState>,
    Path((namespace, name, id)): Path<(String, String, String)>,
) -> Result<Response, UiError> {
    let ctx = Context {
        range: Range::H1,
        now: jiff::Timestamp::now().as_second(),
    };
    let t = crate::api::requests::find_trail(&state, &namespace, &name, &id).await?;
    Ok(render(views::trail(ctx, &namespace, &name, &t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; skiff_session=abc; b=2")]);
        assert_eq!(cookie_token(&h), Some("abc"));
        assert_eq!(
            cookie_token(&headers(&[("cookie", "skiff_sessionx=1")])),
            None
        );
    }

    #[test]
    fn other_origins_are_told_apart() {
        assert!(foreign(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(foreign(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(!foreign(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!foreign(&headers(&[("sec-fetch-site", "none")])));
        assert!(!foreign(&HeaderMap::new()), "not a browser, or an old one");
        let here = [("host", "127.0.0.1:7070")];
        assert!(same_origin(&headers(&[
            here[0],
            ("origin", "http://127.0.0.1:7070")
        ])));
        assert!(!same_origin(&headers(&[
            here[0],
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            here[0],
            ("origin", "http://127.0.0.1:7070.evil")
        ])));
        assert!(!same_origin(&headers(&[here[0]])));
        assert!(same_origin(&headers(&[
            here[0],
            ("sec-fetch-site", "same-origin")
        ])));
    }

    #[test]
    fn a_tail_reads_the_newest_lines_first_across_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("a.1");
        let new = dir.path().join("a");
        std::fs::write(&old, "1\n2\n").expect("write");
        std::fs::write(&new, "3\nnot json\n4\n").expect("write");
        let got: Vec<u32> = tail(&[old.clone(), new.clone()], 3);
        assert_eq!(got, vec![4, 3, 2]);
        let got: Vec<u32> = tail(&[old, new], 10);
        assert_eq!(got, vec![4, 3, 2, 1]);
    }
}
