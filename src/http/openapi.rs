//! The OpenAPI document of the API ([`ApiDoc`]) and the route that serves
//! it.
//!
//! This module lists every handler; handlers never import it (they take
//! their shared responses from `responses` and their errors from `error`),
//! so the document can name them all without a circle.

use axum::{routing::get, Json, Router};
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

// Imported rather than written `super::ops::…` in `paths(...)`: utoipa tags
// an operation with the module path it was named by, and these were
// always untagged.
use super::{
    error::Problem,
    ops::{__path_healthz, __path_metrics, __path_readyz},
    AppState,
};

/// `GET /openapi.json`.
pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi))
}

/// The OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The bearer schemes: the admin token, the payment service's token and
/// user JWTs.
struct Auth;

impl Modify for Auth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The admin token (FIRSTCOME_ADMIN_TOKEN)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "payment",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The payment service's token (FIRSTCOME_CONFIRM_TOKEN): it may only \
                         confirm holds",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "user",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A user JWT (HS256, RS256 or ES256; `exp` required; the user is `sub`). \
                         Required when the service has a JWT key; without one the user id of \
                         the request is trusted.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of the v1 API.
#[derive(OpenApi)]
#[openapi(
    info(title = "firstcome", description = "First-come admission of a limited stock under a rush."),
    paths(
        super::campaigns::create,
        super::admin::list,
        super::campaigns::get,
        super::campaigns::grants,
        super::campaigns::publish,
        super::draws::draw,
        super::operator::pause,
        super::operator::resume,
        super::operator::patch_campaign,
        super::operator::actions,
        super::claims::claim,
        super::claims::status,
        super::claims::cancel,
        super::claims::events,
        super::claims::confirm,
        super::webhooks::list,
        super::webhooks::redeliver,
        healthz,
        readyz,
        metrics,
        openapi,
    ),
    components(schemas(Problem)),
    modifiers(&Auth)
)]
pub struct ApiDoc;
