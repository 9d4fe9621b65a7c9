//! Request-body parsing with errors in the API's own shape.
use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::ApiError;

/// Parse a JSON body: 415 without a JSON content type, 400 for malformed JSON, 422 for JSON of
/// the wrong shape.
pub fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
        .unwrap_or(false);
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", e.to_string()),
            _ => ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("malformed JSON: {e}")),
        }
    })
}
