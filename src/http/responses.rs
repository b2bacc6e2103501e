//! The problem responses that several endpoints share, for their OpenAPI
//! annotations: each is written once here and named in the handlers'
//! `responses(...)`. Each doc comment is the response's description in
//! the document, word for word.
//!
//! These types document answers; nothing constructs them (the answers
//! themselves are [`ApiError`](super::error::ApiError)s). This module names
//! no handler, so every handler may use it.

use utoipa::IntoResponses;

use super::error::{Problem, PROBLEM_JSON};

/// The refusals of a JSON request body.
#[derive(IntoResponses)]
pub enum JsonBodyErrors {
    /// Malformed JSON
    #[response(status = 400, content_type = PROBLEM_JSON)]
    Malformed(Problem),
    /// Body larger than 64 KiB: body_too_large
    #[response(status = 413, content_type = PROBLEM_JSON)]
    TooLarge(Problem),
    /// Not application/json: unsupported_media_type
    #[response(status = 415, content_type = PROBLEM_JSON)]
    NotJson(Problem),
}

/// The refusal of an admin call.
#[derive(IntoResponses)]
pub enum AdminErrors {
    /// Missing or wrong admin token
    #[response(status = 401, content_type = PROBLEM_JSON)]
    Unauthorized(Problem),
}

/// The refusal of a /v1 call over the per-IP limit.
#[derive(IntoResponses)]
pub enum IpLimitErrors {
    /// Over the per-IP rate limit: rate_limited, with Retry-After
    #[response(status = 429, content_type = PROBLEM_JSON)]
    RateLimited(Problem),
}

/// The refusals of a user call (see `auth::Caller`).
#[derive(IntoResponses)]
pub enum UserCallErrors {
    /// User JWT missing, invalid or expired (when JWTs are configured): missing_token, invalid_token, expired_token
    #[response(status = 401, content_type = PROBLEM_JSON)]
    Unauthenticated(Problem),
    /// The user id is not the token's subject: forbidden_user
    #[response(status = 403, content_type = PROBLEM_JSON)]
    Forbidden(Problem),
    /// Over the per-user or per-IP rate limit: rate_limited, with Retry-After
    #[response(status = 429, content_type = PROBLEM_JSON)]
    RateLimited(Problem),
}

/// An unknown campaign id in the path.
#[derive(IntoResponses)]
pub enum CampaignErrors {
    /// Unknown campaign
    #[response(status = 404, content_type = PROBLEM_JSON)]
    NotFound(Problem),
}

/// The refusals of a call on one user's claim (`.../claims/{user_id}`).
#[derive(IntoResponses)]
pub enum ClaimPathErrors {
    /// Unknown campaign, or the user never claimed
    #[response(status = 404, content_type = PROBLEM_JSON)]
    NotFound(Problem),
    /// Invalid user id
    #[response(status = 422, content_type = PROBLEM_JSON)]
    InvalidUserId(Problem),
}

/// A store is down or busy: the client should retry.
#[derive(IntoResponses)]
pub enum StoreErrors {
    /// A store is unavailable: with Retry-After
    #[response(status = 503, content_type = PROBLEM_JSON)]
    Unavailable(Problem),
}
