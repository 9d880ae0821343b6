//! The OpenAPI document of the REST API, generated from the handlers and types.
//!
//! The generated document is checked into the repository as `openapi/skiff-api.json`; a test
//! fails when the two differ (run it with `EXPECTORATE=overwrite` to update the file).

use axum::Json;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "skiff API", description = "Serverless containers on your own machines. Services are Knative Serving v1 Services."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // A fixed version keeps the checked-in document stable across releases of the crate.
        openapi.info.version = "v1".to_owned();
    }
}

/// The document, built from the same route table the daemon serves (see
/// [`super::documented_routes`]), so a route cannot exist without being documented.
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOC.get_or_init(|| super::documented_routes().split_for_parts().1)
}

/// The document as pretty JSON.
pub fn document() -> String {
    openapi()
        .to_pretty_json()
        .expect("the OpenAPI document always serializes")
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn serve() -> Json<serde_json::Value> {
    Json(serde_json::to_value(openapi()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in document is the one the code generates.
    #[test]
    fn checked_in_document_is_current() {
        expectorate::assert_contents("../../openapi/skiff-api.json", &format!("{}\n", document()));
    }
}
