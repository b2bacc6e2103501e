//! The public campaign page, `GET /c/{id}`: the campaign's name, each
//! pool's remaining stock as a live bar, the opening countdown, a claim
//! button, then the user's live status (granted, queued with position and
//! wait, rejected, held with its deadline). Plain HTML, CSS and a little
//! JavaScript, compiled into the binary (no CDN, no build step); Korean or
//! English by `Accept-Language`. The page only calls the public API
//! (docs/ARCHITECTURE.md, "HTTP API"); nothing here decides anything.

use axum::{
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::get,
    Router,
};

use super::{ApiError, AppState};

/// The page's HTML; `{{...}}` are filled in per request.
const CAMPAIGN_HTML: &str = include_str!("campaign.html");
/// Its style sheet.
const CSS: &str = include_str!("page.css");
/// Its script.
const JS: &str = include_str!("campaign.js");

/// How long browsers keep the assets (they are embedded: a new binary may
/// change them, so not forever).
const ASSET_CACHE: &str = "public, max-age=300";

/// Only what the page needs: its own script and style, the API on the same
/// origin, no frames of others, no inline script.
pub(super) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'";

/// The page routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/c/{id}", get(campaign_page))
        .route("/assets/page.css", get(css))
        .route("/assets/campaign.js", get(js))
}

/// A language the pages speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// English (the default).
    En,
    /// Korean.
    Ko,
}

impl Lang {
    /// The language `Accept-Language` prefers among those spoken (highest
    /// q, then order); English when it names neither.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let mut best = (0.0_f32, Lang::En);
        for part in accept.unwrap_or("").split(',') {
            let mut it = part.trim().split(';');
            let tag = it.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = it
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let lang = match tag.split('-').next() {
                Some("ko") => Lang::Ko,
                Some("en") => Lang::En,
                _ => continue,
            };
            if q > best.0 {
                best = (q, lang);
            }
        }
        best.1
    }

    fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ko => "ko",
        }
    }

    /// The page's strings, as the JSON object the script reads.
    fn strings(self) -> &'static str {
        match self {
            Lang::En => include_str!("strings.en.json"),
            Lang::Ko => include_str!("strings.ko.json"),
        }
    }
}

/// `GET /c/{id}`: the page of a published campaign; 404 (the API's
/// problem+json) for an unknown or unpublished one.
async fn campaign_page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let c = state.campaign(&id).await?;
    let lang = Lang::negotiate(
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    );
    let config = serde_json::json!({
        "id": c.id.0,
        // With a JWT key the host page passes the user's token in the
        // fragment (#token=...), which never reaches a server log.
        "auth": if state.jwt.is_some() { "jwt" } else { "user_id" },
    });
    let html = CAMPAIGN_HTML
        .replace("{{lang}}", lang.code())
        .replace("{{title}}", &escape_html(&c.name))
        .replace("{{config}}", &script_json(&config.to_string()))
        .replace("{{strings}}", &script_json(lang.strings()));
    let mut resp = Html(html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("accept-language"));
    h.insert(
        header::CONTENT_LANGUAGE,
        HeaderValue::from_static(lang.code()),
    );
    Ok(resp)
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

pub(super) fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, ASSET_CACHE),
        ],
        body,
    )
        .into_response()
}

/// `s` safe in HTML text.
fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// JSON safe inside a `<script type="application/json">` block: no `</`
/// can end it early.
fn script_json(json: &str) -> String {
    json.replace("</", "<\\/").replace("<!--", "<\\!--")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn korean_when_preferred_english_otherwise() {
        assert_eq!(Lang::negotiate(Some("ko-KR,ko;q=0.9,en;q=0.8")), Lang::Ko);
        assert_eq!(Lang::negotiate(Some("en-US,en;q=0.9,ko;q=0.5")), Lang::En);
        assert_eq!(Lang::negotiate(Some("fr-FR, ko;q=0.7")), Lang::Ko);
        assert_eq!(Lang::negotiate(Some("de")), Lang::En);
        assert_eq!(Lang::negotiate(None), Lang::En);
        assert_eq!(Lang::negotiate(Some("en;q=0.2, ko;q=0.9")), Lang::Ko);
    }

    #[test]
    fn names_and_json_cannot_break_out() {
        assert_eq!(
            escape_html("<b>\"x\" & 'y'"),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;"
        );
        assert_eq!(script_json(r#"{"a":"</script>"}"#), r#"{"a":"<\/script>"}"#);
        for s in [Lang::En.strings(), Lang::Ko.strings()] {
            let v: serde_json::Value = serde_json::from_str(s).unwrap();
            assert!(v["claim"].is_string());
        }
    }
}
