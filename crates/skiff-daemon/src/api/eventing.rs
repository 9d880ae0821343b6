//! Handlers for Brokers, Triggers and PingSources (Knative Eventing's objects): apply from
//! YAML or JSON, read, list and delete, the same way as Services.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use skiff_api::ErrorCode;
use skiff_api::eventing::stored::{Broker, PingSource, Trigger};
use skiff_api::eventing::{self, EventingKind};
use skiff_api::manifest::Object;
use skiff_api::object::List;
use skiff_api::wire::APPLY_RESULT_HEADER;
use skiff_control::controller::{ApplyResult, ControllerError};
use skiff_control::eventing::Eventing;
use skiff_store::keys;

use super::services::{WriteParams, check_segment, dry_run, query, read_manifest};
use super::{ApiError, ApiState};

fn eventing(state: &ApiState) -> Result<&std::sync::Arc<Eventing>, ApiError> {
    state.eventing.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unavailable,
            "eventing needs the daemon's data directory for its event queue",
        )
    })
}

fn list<T>(api_version: &str, kind: &str, items: Vec<T>) -> List<T> {
    List {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        items,
    }
}

/// Reads one eventing object of `kind` from a request body and stores it.
async fn apply(
    state: &ApiState,
    kind: EventingKind,
    namespace: &str,
    name: &str,
    params: Result<Query<WriteParams>, QueryRejection>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_segment("namespace", namespace)?;
    let ev = eventing(state)?;
    let dry = dry_run(&query(params)?.dry_run)?;
    let (_permit, doc) = read_manifest(state, headers, body).await?;
    let invalid = |problems| ControllerError::Invalid {
        problems: doc.place(problems, false),
    };
    if EventingKind::of(&doc) != Some(kind) {
        let mut p = skiff_api::problems::Problems::new();
        p.invalid(
            &skiff_api::FieldPath::root().key("kind"),
            format!(
                "this endpoint takes a `{}` {}",
                kind.api_version(),
                kind.as_str()
            ),
        );
        return Err(invalid(p).into());
    }
    let object = eventing::object_from_document(&doc, kind).map_err(invalid)?;
    if object.name() != Some(name) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "metadata.name `{}` does not match the name in the path, `{name}`",
                object.name().unwrap_or_default()
            ),
        ));
    }
    if let Some(ns) = object.manifest_namespace()
        && ns != namespace
    {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "metadata.namespace `{ns}` does not match the namespace in the path, `{namespace}`"
            ),
        ));
    }
    let warnings = object.warnings();
    let (result, mut response) = match object {
        Object::Broker(mut v) => {
            v.meta.namespace = namespace.to_owned();
            let (r, o) = ev.apply_broker(*v, dry).await?;
            (r, Json(o).into_response())
        }
        Object::Trigger(mut v) => {
            v.meta.namespace = namespace.to_owned();
            let (r, o) = ev.apply_trigger(*v, dry).await?;
            (r, Json(o).into_response())
        }
        Object::PingSource(mut v) => {
            v.meta.namespace = namespace.to_owned();
            let (r, o) = ev.apply_ping_source(*v, dry).await?;
            (r, Json(o).into_response())
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "not an eventing object",
            ));
        }
    };
    if result == ApplyResult::Created {
        *response.status_mut() = StatusCode::CREATED;
    }
    let h = response.headers_mut();
    h.insert(
        APPLY_RESULT_HEADER,
        HeaderValue::from_static(result.as_str()),
    );
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "'"))) {
            h.append(axum::http::header::WARNING, v);
        }
    }
    Ok(response)
}

macro_rules! handlers {
    (
        $t:ty, $kind:expr, $api:expr, $list_kind:literal, $tag:literal, $prefix:path, $fill:expr,
        all = $all_path:literal, ns = $ns_path:literal, one = $one_path:literal,
        $list_all:ident, $list_ns:ident, $apply:ident, $get:ident, $delete:ident
    ) => {
        #[doc = concat!("Lists every ", $tag, " of every namespace.")]
        #[utoipa::path(get, path = $all_path, tag = $tag,
            responses((status = 200, body = List<$t>), (status = 401, body = skiff_api::ErrorBody)))]
        pub async fn $list_all(State(state): State<ApiState>) -> Result<Json<List<$t>>, ApiError> {
            let ev = eventing(&state)?;
            let mut items = ev.list::<$t>($prefix(None).as_str()).await?;
            items.iter_mut().for_each(|i| ($fill)(ev, i));
            Ok(Json(list($api, $list_kind, items)))
        }

        #[doc = concat!("Lists the ", $tag, " of a namespace.")]
        #[utoipa::path(get, path = $ns_path, tag = $tag,
            params(("namespace" = String, Path, description = "The namespace")),
            responses((status = 200, body = List<$t>), (status = 400, body = skiff_api::ErrorBody), (status = 401, body = skiff_api::ErrorBody)))]
        pub async fn $list_ns(
            State(state): State<ApiState>,
            Path(namespace): Path<String>,
        ) -> Result<Json<List<$t>>, ApiError> {
            check_segment("namespace", &namespace)?;
            let ev = eventing(&state)?;
            let mut items = ev.list::<$t>($prefix(Some(&namespace)).as_str()).await?;
            items.iter_mut().for_each(|i| ($fill)(ev, i));
            Ok(Json(list($api, $list_kind, items)))
        }

        #[doc = concat!("Creates or replaces one of the ", $tag, " from its Knative manifest.")]
        #[utoipa::path(put, path = $one_path, tag = $tag,
            params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The name"), WriteParams),
            request_body(content = String, description = "The Knative manifest, as JSON or YAML", content_type = "application/json"),
            responses(
                (status = 200, body = $t, description = "Configured or unchanged", headers(("skiff-apply-result" = String))),
                (status = 201, body = $t, description = "Created", headers(("skiff-apply-result" = String))),
                (status = 400, body = skiff_api::ErrorBody), (status = 401, body = skiff_api::ErrorBody),
                (status = 409, body = skiff_api::ErrorBody), (status = 413, body = skiff_api::ErrorBody)))]
        pub async fn $apply(
            State(state): State<ApiState>,
            Path((namespace, name)): Path<(String, String)>,
            params: Result<Query<WriteParams>, QueryRejection>,
            headers: HeaderMap,
            body: Body,
        ) -> Result<Response, ApiError> {
            apply(&state, $kind, &namespace, &name, params, &headers, body).await
        }

        #[doc = concat!("Reads one of the ", $tag, ", with its status.")]
        #[utoipa::path(get, path = $one_path, tag = $tag,
            params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The name")),
            responses((status = 200, body = $t), (status = 401, body = skiff_api::ErrorBody), (status = 404, body = skiff_api::ErrorBody)))]
        pub async fn $get(
            State(state): State<ApiState>,
            Path((namespace, name)): Path<(String, String)>,
        ) -> Result<Json<$t>, ApiError> {
            check_segment("namespace", &namespace)?;
            let ev = eventing(&state)?;
            let mut item = ev.get::<$t>(&namespace, &name).await?;
            ($fill)(ev, &mut item);
            Ok(Json(item))
        }

        #[doc = concat!("Deletes one of the ", $tag, ".")]
        #[utoipa::path(delete, path = $one_path, tag = $tag,
            params(("namespace" = String, Path, description = "The namespace"), ("name" = String, Path, description = "The name")),
            responses((status = 204, description = "Deleted"), (status = 401, body = skiff_api::ErrorBody), (status = 404, body = skiff_api::ErrorBody)))]
        pub async fn $delete(
            State(state): State<ApiState>,
            Path((namespace, name)): Path<(String, String)>,
        ) -> Result<StatusCode, ApiError> {
            check_segment("namespace", &namespace)?;
            eventing(&state)?.delete::<$t>(&namespace, &name).await?;
            Ok(StatusCode::NO_CONTENT)
        }
    };
}

handlers!(
    Broker,
    EventingKind::Broker,
    eventing::EVENTING_API_VERSION,
    "BrokerList",
    "brokers",
    keys::brokers,
    skiff_control::dispatch::fill_broker,
    all = "/api/v1/brokers",
    ns = "/api/v1/namespaces/{namespace}/brokers",
    one = "/api/v1/namespaces/{namespace}/brokers/{name}",
    list_all_brokers,
    list_brokers,
    apply_broker,
    get_broker,
    delete_broker
);
handlers!(
    Trigger,
    EventingKind::Trigger,
    eventing::EVENTING_API_VERSION,
    "TriggerList",
    "triggers",
    keys::triggers,
    skiff_control::dispatch::fill_trigger,
    all = "/api/v1/triggers",
    ns = "/api/v1/namespaces/{namespace}/triggers",
    one = "/api/v1/namespaces/{namespace}/triggers/{name}",
    list_all_triggers,
    list_triggers,
    apply_trigger,
    get_trigger,
    delete_trigger
);
handlers!(
    PingSource,
    EventingKind::PingSource,
    eventing::SOURCES_API_VERSION,
    "PingSourceList",
    "pingsources",
    keys::pingsources,
    |_: &Eventing, _: &mut PingSource| {},
    all = "/api/v1/pingsources",
    ns = "/api/v1/namespaces/{namespace}/pingsources",
    one = "/api/v1/namespaces/{namespace}/pingsources/{name}",
    list_all_ping_sources,
    list_ping_sources,
    apply_ping_source,
    get_ping_source,
    delete_ping_source
);
