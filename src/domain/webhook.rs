//! A campaign's webhook: its endpoint and signing secret as checked at
//! creation, the allow list of endpoint hosts, and the Standard Webhooks
//! signature of a delivery. No I/O.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Prefix of a signing secret (Standard Webhooks).
pub const SECRET_PREFIX: &str = "whsec_";
/// Fewest key bytes a secret may hold (192 bits).
pub const MIN_SECRET_BYTES: usize = 24;
/// Most key bytes a secret may hold.
pub const MAX_SECRET_BYTES: usize = 64;
/// Longest endpoint URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// A checked webhook: where events go and the key that signs them.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// The endpoint, `http` or `https` with a host.
    pub url: String,
    /// The secret as given (`whsec_<base64>`), kept to sign deliveries.
    pub secret: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret must not reach logs.
        f.debug_struct("Webhook").field("url", &self.url).finish()
    }
}

/// Why a webhook was refused; each maps to a stable error code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    /// Not an absolute http(s) URL with a host.
    #[error(
        "webhook.url must be an http or https URL with a host (at most {MAX_URL_LEN} characters)"
    )]
    BadUrl,
    /// The host is not in the service's allow list.
    #[error(
        "webhook.url's host {0:?} is not in the service's allowed webhook hosts (--webhook-allow)"
    )]
    HostNotAllowed(String),
    /// Not `whsec_` and 24..=64 bytes of base64.
    #[error("webhook.secret must be \"whsec_\" followed by the base64 of {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes")]
    BadSecret,
}

impl WebhookError {
    /// The stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadUrl => "invalid_webhook_url",
            Self::HostNotAllowed(_) => "webhook_host_not_allowed",
            Self::BadSecret => "invalid_webhook_secret",
        }
    }
}

/// The endpoint hosts webhooks may name (`--webhook-allow`): `host` (any
/// port) or `host:port`, compared case-insensitively. Empty: any host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookAllow(Vec<(String, Option<u16>)>);

impl WebhookAllow {
    /// Parses `host[:port]` entries (IPv6 literals in brackets); `None` for
    /// an entry that is not one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Option<Self> {
        let mut out = Vec::new();
        for e in entries {
            let e = e.as_ref().trim().to_ascii_lowercase();
            if e.is_empty() {
                continue;
            }
            let u = url::Url::parse(&format!("http://{e}/")).ok()?;
            let host = u.host_str()?.to_string();
            // Anything beyond host and port (a path, user info) is a typo.
            if u.path() != "/" || !u.username().is_empty() || u.query().is_some() {
                return None;
            }
            let port = u.port();
            if e.rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                && port.is_none()
            {
                // `host:80` parses as the default port; keep it explicit.
                out.push((host, Some(80)));
            } else {
                out.push((host, port));
            }
        }
        Some(Self(out))
    }

    /// Whether no list was given (every host allowed).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `host` on `port` is allowed.
    fn allows(&self, host: &str, port: u16) -> bool {
        self.is_empty()
            || self
                .0
                .iter()
                .any(|(h, p)| h == host && p.is_none_or(|p| p == port))
    }
}

impl Webhook {
    /// Checks an endpoint and a secret against the allow list.
    pub fn parse(url: &str, secret: &str, allow: &WebhookAllow) -> Result<Self, WebhookError> {
        if url.len() > MAX_URL_LEN {
            return Err(WebhookError::BadUrl);
        }
        let u = url::Url::parse(url).map_err(|_| WebhookError::BadUrl)?;
        if !matches!(u.scheme(), "http" | "https") || !u.username().is_empty() {
            return Err(WebhookError::BadUrl);
        }
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(WebhookError::BadUrl)?;
        let port = u.port_or_known_default().ok_or(WebhookError::BadUrl)?;
        if !allow.allows(host, port) {
            return Err(WebhookError::HostNotAllowed(host.to_string()));
        }
        if secret_key(secret).is_none() {
            return Err(WebhookError::BadSecret);
        }
        Ok(Self {
            url: u.to_string(),
            secret: secret.to_string(),
        })
    }
}

/// The key bytes of a `whsec_<base64>` secret, if it is one.
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let b64 = secret.strip_prefix(SECRET_PREFIX)?;
    let key = STANDARD.decode(b64).ok()?;
    (MIN_SECRET_BYTES..=MAX_SECRET_BYTES)
        .contains(&key.len())
        .then_some(key)
}

/// The `webhook-signature` header value: `v1,<base64 HMAC-SHA256 of
/// "{id}.{timestamp}.{body}">` keyed with the secret's bytes.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn endpoints_and_secrets_are_checked() {
        let any = WebhookAllow::default();
        assert!(Webhook::parse("https://hooks.example/x", SECRET, &any).is_ok());
        assert!(Webhook::parse("http://127.0.0.1:9/x", SECRET, &any).is_ok());
        let code = |u: &str, s: &str, a: &WebhookAllow| Webhook::parse(u, s, a).unwrap_err().code();
        assert_eq!(
            code("ftp://hooks.example/", SECRET, &any),
            "invalid_webhook_url"
        );
        assert_eq!(code("hooks.example/x", SECRET, &any), "invalid_webhook_url");
        assert_eq!(
            code("https://u:p@hooks.example/", SECRET, &any),
            "invalid_webhook_url"
        );
        assert_eq!(
            code(
                "https://hooks.example/",
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                &any
            ),
            "invalid_webhook_secret"
        );
        assert_eq!(
            code("https://hooks.example/", "whsec_c2hvcnQ=", &any),
            "invalid_webhook_secret"
        );
        assert_eq!(
            code("https://hooks.example/", "whsec_!!!", &any),
            "invalid_webhook_secret"
        );
        let allow = WebhookAllow::parse(&["Hooks.Example", "127.0.0.1:9"]).unwrap();
        assert!(Webhook::parse("https://hooks.example:8443/x", SECRET, &allow).is_ok());
        assert!(Webhook::parse("http://127.0.0.1:9/x", SECRET, &allow).is_ok());
        assert_eq!(
            code("http://127.0.0.1:10/x", SECRET, &allow),
            "webhook_host_not_allowed"
        );
        assert_eq!(
            code("http://localhost:9/x", SECRET, &allow),
            "webhook_host_not_allowed"
        );
        assert!(WebhookAllow::parse(&["a.example/path"]).is_none());
        let p80 = WebhookAllow::parse(&["a.example:80"]).unwrap();
        assert!(Webhook::parse("http://a.example/", SECRET, &p80).is_ok());
        assert!(Webhook::parse("https://a.example/", SECRET, &p80).is_err());
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks specification.
        let key = secret_key(SECRET).unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn the_secret_stays_out_of_debug_output() {
        let w = Webhook::parse("https://h.example/", SECRET, &WebhookAllow::default()).unwrap();
        assert!(!format!("{w:?}").contains("whsec_"));
    }
}
