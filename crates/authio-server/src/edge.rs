//! The edge: what every request meets before any handler, in one place.
//!
//! - No NUL character (U+0000) gets in: not in the path, the query or the body, however it is
//!   encoded (a raw byte, `%00`, or a JSON `\u0000` escape). PostgreSQL cannot store one in
//!   text and would answer with an error (22021); the caller gets a 400 instead.
//! - Bodies are bounded (`max_body_bytes`, 413) and must arrive within `body_read` (408).
//! - The framework's own refusals (405, 413) answer in the API's error shape.
//! - Headers must arrive within `header_read` ([`crate::serve_with`]), so a client that sends
//!   partial headers cannot hold a connection open.
//!
//! The OAuth endpoints answer in RFC 6749's shape (`{"error", "error_description"}`), the rest
//! in the API's (`{"error": {"code", "message"}}`).
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::OAuthError;
use crate::ApiError;

/// Limits on how a request arrives.
#[derive(Clone, Copy, Debug)]
pub struct EdgeLimits {
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// How long a client may take to send its request headers.
    pub header_read: Duration,
    /// How long a client may take to send its body, once the headers are in.
    pub body_read: Duration,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            max_body_bytes: 1024 * 1024,
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(10),
        }
    }
}

/// The paths that speak OAuth 2.0's error shape (the guard runs before a custom domain's
/// path is rewritten, so a project's host serves its endpoints at `/oauth2/...`).
fn speaks_oauth(path: &str) -> bool {
    matches!(
        path,
        "/v1/auth/token"
            | "/v1/auth/introspect"
            | "/v1/auth/revoke"
            | "/oauth2/token"
            | "/oauth2/introspect"
            | "/oauth2/revoke"
    ) || (path.starts_with("/p/")
        && ["/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"].iter().any(|e| path.ends_with(e)))
}

/// The shape a refusal takes: the API's, OAuth's (RFC 6749 5.2) or SCIM's (RFC 7644 3.12).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Api,
    OAuth,
    Scim,
}

fn shape_of(path: &str) -> Shape {
    if speaks_oauth(path) {
        Shape::OAuth
    } else if path.starts_with("/scim/") {
        Shape::Scim
    } else {
        Shape::Api
    }
}

fn refuse(shape: Shape, status: StatusCode, code: &'static str, message: &str) -> Response {
    match shape {
        Shape::OAuth => {
            let error = if status == StatusCode::BAD_REQUEST { "invalid_request" } else { code };
            OAuthError { status, error, description: message.to_owned(), retry_after: None }.into_response()
        }
        Shape::Scim => {
            let scim_type = (status == StatusCode::BAD_REQUEST).then_some("invalidValue");
            crate::routes::scim::scim_error(authio_core::dsync::scim::ScimError::new(
                status.as_u16(),
                scim_type,
                message,
            ))
        }
        Shape::Api => ApiError::new(status, code, message).into_response(),
    }
}

/// Whether `%00` appears in a percent-encoded string (a path or a query).
fn has_encoded_nul(s: &str) -> bool {
    s.contains("%00")
}

/// How a body encodes its text, for finding an encoded NUL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    Form,
    Json,
    Other,
}

impl BodyKind {
    fn of(content_type: Option<&str>) -> Self {
        let m = content_type.and_then(|v| v.split(';').next()).map(|m| m.trim().to_ascii_lowercase());
        match m.as_deref() {
            Some("application/x-www-form-urlencoded") => BodyKind::Form,
            Some(m) if m == "application/json" || (m.starts_with("application/") && m.ends_with("+json")) => {
                BodyKind::Json
            }
            _ => BodyKind::Other,
        }
    }
}

/// Whether a body carries a NUL: a raw byte, a form's `%00`, or a JSON `\u0000` escape (an
/// escape only when preceded by an even number of backslashes, so `"\\u0000"` is text). A
/// JSON body's `%00` is text, and so is a form's `\u0000`.
pub(crate) fn body_has_nul(body: &[u8], kind: BodyKind) -> bool {
    if body.contains(&0) {
        return true;
    }
    match kind {
        BodyKind::Form => return body.windows(3).any(|w| w == b"%00"),
        BodyKind::Other => return false,
        BodyKind::Json => {}
    }
    let text = String::from_utf8_lossy(body);
    let mut from = 0;
    while let Some(k) = text[from..].find("\\u0000") {
        let at = from + k;
        let backslashes = text[..at].bytes().rev().take_while(|b| *b == b'\\').count();
        if backslashes % 2 == 0 {
            return true;
        }
        from = at + 1;
    }
    false
}

/// The edge's check of every request (see the module's documentation).
pub async fn guard(State(limits): State<EdgeLimits>, req: Request, next: Next) -> Response {
    let oauth = shape_of(req.uri().path());
    let nul = "NUL characters (U+0000) are not accepted";
    if has_encoded_nul(req.uri().path()) || req.uri().query().is_some_and(has_encoded_nul) {
        return refuse(oauth, StatusCode::BAD_REQUEST, "invalid_request", nul);
    }
    let req = if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        req
    } else {
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limits.max_body_bytes) {
            return too_large(oauth, limits.max_body_bytes);
        }
        let read = axum::body::to_bytes(body, limits.max_body_bytes);
        let bytes = match tokio::time::timeout(limits.body_read, read).await {
            Err(_) => {
                let mut r =
                    refuse(oauth, StatusCode::REQUEST_TIMEOUT, "request_timeout", "the request body was too slow");
                r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                return r;
            }
            // The limit, or a client that went away mid-body.
            Ok(Err(e)) if is_length_limit(&e) => return too_large(oauth, limits.max_body_bytes),
            Ok(Err(_)) => {
                return refuse(oauth, StatusCode::BAD_REQUEST, "invalid_request", "the request body could not be read")
            }
            Ok(Ok(b)) => b,
        };
        let kind = BodyKind::of(parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()));
        if body_has_nul(&bytes, kind) {
            return refuse(oauth, StatusCode::BAD_REQUEST, "invalid_request", nul);
        }
        Request::from_parts(parts, Body::from(bytes))
    };
    let resp = next.run(req).await;
    // (SCIM's router answers its own 405 in SCIM's shape.)
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED && oauth != Shape::Scim {
        // The router's own 405 has an empty body; keep its Allow header.
        let allow = resp.headers().get(header::ALLOW).cloned();
        let mut out = refuse(oauth, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed here");
        if let Some(a) = allow {
            out.headers_mut().insert(header::ALLOW, a);
        }
        return out;
    }
    resp
}

/// Whether reading a body stopped at the limit (`to_bytes` wraps http-body-util's error).
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

fn too_large(oauth: Shape, max: usize) -> Response {
    let mut r = refuse(
        oauth,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        &format!("request bodies are limited to {max} bytes"),
    );
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_found_in_every_encoding() {
        use BodyKind::*;
        assert!(body_has_nul(b"a\0b", Other));
        assert!(body_has_nul(b"client_id=x%00y", Form));
        assert!(body_has_nul(br#"{"name":"a\u0000"}"#, Json));
        assert!(body_has_nul(br#"{"name":"a\\\u0000"}"#, Json));
        // An escaped backslash followed by "u0000" is text, not a NUL; so is a JSON "%00",
        // and an escape in a body that is not JSON.
        assert!(!body_has_nul(br#"{"name":"a\\u0000"}"#, Json));
        assert!(!body_has_nul(br#"{"name":"100%00"}"#, Json));
        assert!(!body_has_nul(br#"plain \u0000 text"#, Other));
        assert!(!body_has_nul(b"grant_type=client_credentials&scope=read", Form));
        assert_eq!(BodyKind::of(Some("application/json; charset=utf-8")), Json);
        assert_eq!(BodyKind::of(Some("application/scim+json")), Json);
        assert_eq!(BodyKind::of(Some("application/x-www-form-urlencoded")), Form);
        assert_eq!(BodyKind::of(None), Other);
        assert!(has_encoded_nul("/p/x/oauth/%00"));
    }

    #[test]
    fn oauth_endpoints_are_told_apart() {
        assert!(speaks_oauth("/v1/auth/token"));
        assert!(speaks_oauth("/p/0192/oauth2/token"));
        assert!(speaks_oauth("/p/0192/oauth2/revoke"));
        assert!(speaks_oauth("/oauth2/token"), "a custom domain's path, before its rewrite");
        assert!(!speaks_oauth("/p/0192/oauth2/authorize"));
        assert!(!speaks_oauth("/v1/projects/x/users"));
    }
}
