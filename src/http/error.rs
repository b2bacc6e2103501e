//! The HTTP boundary's one error type, [`ApiError`], its RFC 9457
//! `application/problem+json` rendering ([`Problem`], with a stable `code`),
//! and the conversions of every lower layer's error into it.
//!
//! Handlers, extractors and middleware import their errors from here. This
//! module names no handler and no router, so any of them may depend on it.

use axum::{
    extract::rejection::{JsonRejection, QueryRejection},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::{
    domain::{IdError, NewCampaignError, WebhookError},
    modes::AdmissionError,
    storage::{redis::RedisStoreError, StoreError},
};

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Seconds a claimant of a paused campaign is asked to wait (409
/// `paused`): a pause is an operator's act, it lasts longer than a blip.
pub const PAUSED_RETRY_AFTER_SECS: u64 = 5;

/// The detail of every 503 `database_unavailable`: fixed, the cause is
/// logged, never answered.
pub const DATABASE_UNAVAILABLE: &str = "the database is unavailable; retry shortly";

/// The detail of every 503 `database_busy`: the database gave up on the
/// statement for other transactions (deadlock victim, lock wait timeout)
/// and wrote nothing; the same request may succeed when retried.
pub const DATABASE_BUSY: &str = "the database is busy with other claims; retry shortly";

/// The detail of every 503 `redis_unavailable`: fixed, the cause is logged.
pub const REDIS_UNAVAILABLE: &str = "redis is unavailable; retry shortly";

/// Media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem, as every error is answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary (the HTTP reason).
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// Stable machine-readable code.
    pub code: String,
    /// Human-readable detail.
    pub detail: String,
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400/413/415/422: the request itself is wrong.
    #[error("{detail}")]
    Invalid {
        /// HTTP status.
        status: StatusCode,
        /// Stable code.
        code: &'static str,
        /// Human-readable detail.
        detail: String,
    },
    /// 401: admin call without the right token.
    #[error("missing or wrong admin token")]
    Unauthorized,
    /// 401: user call without a valid JWT (`missing_token`, `invalid_token`,
    /// `expired_token`).
    #[error("{detail}")]
    Unauthenticated {
        /// Stable code.
        code: &'static str,
        /// Human-readable detail.
        detail: String,
    },
    /// 403: the caller is known but may not act for this user.
    #[error("{detail}")]
    Forbidden {
        /// Stable code.
        code: &'static str,
        /// Human-readable detail.
        detail: String,
    },
    /// 429 with Retry-After: over a rate limit (code `rate_limited`).
    #[error("{detail}")]
    RateLimited {
        /// Seconds until a request would be allowed again.
        retry_after_secs: u64,
        /// Human-readable detail.
        detail: String,
    },
    /// 404.
    #[error("{detail}")]
    NotFound {
        /// Stable code.
        code: &'static str,
        /// Human-readable detail.
        detail: String,
    },
    /// 409: the state forbids it (cancel a refused claim, after the hold).
    #[error("{detail}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// Human-readable detail.
        detail: String,
    },
    /// 409 `paused` with Retry-After: an operator paused the campaign and
    /// the user has no answer yet (nothing was remembered).
    #[error("the campaign is paused; retry later")]
    Paused,
    /// 503 with Retry-After: a store is unreachable or busy.
    #[error("{detail}")]
    Unavailable {
        /// Stable code.
        code: &'static str,
        /// Human-readable detail.
        detail: String,
    },
    /// 500: a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 422 with `code`.
    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code,
            detail: detail.into(),
        }
    }

    /// A 400 with `code`.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            status: StatusCode::BAD_REQUEST,
            code,
            detail: detail.into(),
        }
    }

    /// A 401 of a user call with `code`.
    pub fn unauthenticated(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Unauthenticated {
            code,
            detail: detail.into(),
        }
    }

    /// A 404 with `code`.
    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::NotFound {
            code,
            detail: detail.into(),
        }
    }

    /// A 409 with `code`.
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            detail: detail.into(),
        }
    }

    /// A 503 (with Retry-After) with `code`.
    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Unavailable {
            code,
            detail: detail.into(),
        }
    }

    /// 404 for an unknown campaign.
    pub fn campaign_not_found() -> Self {
        Self::not_found("campaign_not_found", "no campaign with that id")
    }

    /// 404 for a user who never claimed in the campaign.
    pub fn claim_not_found() -> Self {
        Self::not_found(
            "claim_not_found",
            "this user has not claimed in this campaign",
        )
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Invalid { status, .. } => *status,
            Self::Unauthorized | Self::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Conflict { .. } | Self::Paused => StatusCode::CONFLICT,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { code, .. }
            | Self::NotFound { code, .. }
            | Self::Conflict { code, .. }
            | Self::Unavailable { code, .. }
            | Self::Unauthenticated { code, .. }
            | Self::Forbidden { code, .. } => code,
            Self::Unauthorized => "unauthorized",
            Self::Paused => "paused",
            Self::RateLimited { .. } => "rate_limited",
            Self::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(code = self.code(), error = %self, "request failed");
        }
        let detail = match &self {
            // Never leak internals to the client.
            Self::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        };
        let body = json!({
            "type": format!("https://firstcome.dev/problems/{}", self.code()),
            "title": status.canonical_reason().unwrap_or("error"),
            "status": status.as_u16(),
            "code": self.code(),
            "detail": detail,
        });
        let mut resp = (status, body.to_string()).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match self {
            Self::Unavailable { .. } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            Self::Paused => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(PAUSED_RETRY_AFTER_SECS),
                );
            }
            Self::RateLimited {
                retry_after_secs, ..
            } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            Self::Unauthorized => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unauthenticated { .. } => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            _ => {}
        }
        resp
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let (status, code) = match &r {
            JsonRejection::JsonDataError(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
            JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            _ if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
            }
            _ => (StatusCode::BAD_REQUEST, "bad_body"),
        };
        Self::Invalid {
            status,
            code,
            detail: r.body_text(),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request("invalid_query", r.body_text())
    }
}

impl From<NewCampaignError> for ApiError {
    fn from(e: NewCampaignError) -> Self {
        Self::unprocessable(e.code(), e.to_string())
    }
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        Self::unprocessable(e.code(), e.to_string())
    }
}

impl From<IdError> for ApiError {
    fn from(e: IdError) -> Self {
        let code = match &e {
            IdError::Empty(k) | IdError::TooLong(k, _) | IdError::BadChar(k) if *k == "pool" => {
                "invalid_pool"
            }
            _ => "invalid_user_id",
        };
        Self::unprocessable(code, e.to_string())
    }
}

impl ApiError {
    /// A store is down: 503 `code` with a fixed `detail`; the cause stays
    /// in the log (driver text names databases, hosts and statements).
    fn store_down(code: &'static str, detail: &'static str, cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, code, "store unavailable");
        Self::unavailable(code, detail)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt(m) => Self::Internal(m),
            e if e.is_unique_violation() => {
                Self::conflict("conflict", "the request collides with existing data")
            }
            e if e.is_contention() => Self::store_down("database_busy", DATABASE_BUSY, &e),
            e => Self::store_down("database_unavailable", DATABASE_UNAVAILABLE, &e),
        }
    }
}

impl From<RedisStoreError> for ApiError {
    fn from(e: RedisStoreError) -> Self {
        match e {
            RedisStoreError::Protocol(m) => Self::Internal(m),
            e => Self::store_down("redis_unavailable", REDIS_UNAVAILABLE, &e),
        }
    }
}

impl From<AdmissionError> for ApiError {
    fn from(e: AdmissionError) -> Self {
        match e {
            AdmissionError::Database(e) => e.into(),
            AdmissionError::Redis(e) => e.into(),
            AdmissionError::Rebuilding => Self::unavailable("rebuilding", e.to_string()),
            AdmissionError::Pending => Self::unavailable("pending", e.to_string()),
            AdmissionError::Paused => Self::Paused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_redis_failure_answers_the_fixed_detail() {
        let cause = redis::RedisError::from((
            redis::ErrorKind::Io,
            "connection refused",
            "redis://10.1.2.3:6379".to_string(),
        ));
        let resp = ApiError::from(RedisStoreError::Redis(cause)).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "redis_unavailable");
        assert_eq!(v["detail"], REDIS_UNAVAILABLE);
    }
}
