//! End-user and client authentication: `/v1/auth/signup`, `/v1/auth/signin` (JSON), and the
//! OAuth endpoints `/v1/auth/token` (RFC 6749: client credentials, refresh token),
//! `/v1/auth/introspect` (RFC 7662) and `/v1/auth/revoke` (RFC 7009), form-encoded.
use std::net::{IpAddr, SocketAddr};

use authio_core::identity::auth::{Caller, ClientToken, Introspection, UserTokens};
use authio_core::types::ClientInfo;
use authio_core::CoreError;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::OAuthError;
use crate::extract::json_body;
use crate::routes::users::UserResponse;
use crate::{ApiError, AppState};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    pub project_id: Uuid,
    #[schema(format = "email", min_length = 3, max_length = 254)]
    pub email: String,
    /// Sign-up: 8 to 256 characters. Sign-in: anything up to 4096 bytes is judged.
    #[schema(min_length = 1, max_length = 4096)]
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Rotates on every use; a used one presented again ends the session.
    pub refresh_token: String,
    pub session_id: Uuid,
    pub user_id: Uuid,
}

impl From<UserTokens> for TokenResponse {
    fn from(t: UserTokens) -> Self {
        TokenResponse {
            access_token: t.access_token,
            token_type: t.token_type.to_owned(),
            expires_in: t.expires_in,
            refresh_token: t.refresh_token,
            session_id: t.session_id,
            user_id: t.user_id,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct SignUpResponse {
    pub user: UserResponse,
    #[serde(flatten)]
    pub tokens: TokenResponse,
}

/// The client's address: the peer's, unless the peer is one of the configured trusted proxies;
/// then `X-Forwarded-For` is walked from its right (the hop nearest to us) past every trusted
/// proxy, and the first address that is not one is the client. Anything unparsable stops the
/// walk at the last address known good. Untrusted peers' headers are ignored, so a client
/// cannot choose the address its rate limits count against.
pub(crate) fn client_ip(
    state: &AppState,
    connect: Option<&Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
) -> Option<IpAddr> {
    forwarded_client(connect.map(|c| c.0 .0.ip())?, headers, &state.trusted_proxies)
}

/// [`client_ip`] for code that holds the request's extensions rather than an extractor.
pub(crate) fn client_ip_of(state: &AppState, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
    forwarded_client(peer?.ip(), headers, &state.trusted_proxies)
}

fn forwarded_client(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut client = peer;
    if !is_trusted(&client) {
        return Some(client);
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(client)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod forwarded_tests {
    use super::*;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer_proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        // A stranger's header is ignored.
        assert_eq!(forwarded_client(stranger, &xff("203.0.113.1"), &trusted), Some(stranger));
        // Through our proxy: the rightmost address that is not ours.
        let h = xff("1.2.3.4, 203.0.113.1, 10.0.0.9");
        assert_eq!(forwarded_client(peer_proxy, &h, &trusted), Some("203.0.113.1".parse().unwrap()));
        // No header: the proxy itself.
        assert_eq!(forwarded_client(peer_proxy, &HeaderMap::new(), &trusted), Some(peer_proxy));
        // Garbage stops the walk at the last good hop.
        assert_eq!(forwarded_client(peer_proxy, &xff("nonsense"), &trusted), Some(peer_proxy));
        // No proxies configured: the peer, always.
        assert_eq!(forwarded_client(peer_proxy, &xff("203.0.113.1"), &[]), Some(peer_proxy));
    }
}

pub(crate) fn client_info(headers: &HeaderMap, ip: Option<IpAddr>) -> ClientInfo {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    ClientInfo { ip: ip.map(|i| i.to_string()), user_agent: text("user-agent"), request_id: text("x-request-id") }
}

pub(crate) fn no_store<T: IntoResponse>(status: StatusCode, body: T) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// Create a user with a password, and sign them in.
#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", request_body = PasswordRequest,
    responses(
        (status = 201, description = "created and signed in", body = SignUpResponse),
        (status = 404, description = "unknown project (`project_not_found`)", body = crate::error::ErrorBody),
        (status = 403, description = "`mfa_required`: the project requires a second factor; the account is made and its first sign-in waits for an enrolment (`mfa_token`, `enrolment_required`)", body = crate::routes::mfa::MfaRequiredBody),
        (status = 409, description = "email taken (`email_taken`)", body = crate::error::ErrorBody),
        (status = 422, description = "invalid email or password (8-256 characters)", body = crate::error::ErrorBody),
        (status = 429, description = "too many sign-ups from this address", body = crate::error::ErrorBody),
    ))]
pub async fn sign_up(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: PasswordRequest = json_body(&headers, &body)?;
    crate::routes::passwordless::check_origin(&state, &headers, req.project_id).await?;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let (user, signed) =
        state.identity.sign_up(req.project_id, &req.email, &req.password, &client_info(&headers, ip), ip).await?;
    Ok(match signed {
        authio_core::identity::auth::SignIn::Tokens(tokens) => {
            no_store(StatusCode::CREATED, Json(SignUpResponse { user: user.into(), tokens: tokens.into() }))
        }
        // The project requires a second factor: the account exists, its first session waits
        // for the enrolment.
        waiting => crate::routes::mfa::sign_in_answer(waiting, StatusCode::CREATED),
    })
}

/// Sign in with email and password.
#[utoipa::path(post, path = "/v1/auth/signin", tag = "auth", request_body = PasswordRequest,
    responses(
        (status = 200, description = "signed in", body = TokenResponse),
        (status = 401, description = "wrong email or password, the same for unknown accounts (`invalid_credentials`)", body = crate::error::ErrorBody),
        (status = 403, description = "`mfa_required`: the password is right and a second factor must follow (`mfa_token` for `/v1/auth/mfa/verify`, or an enrolment when `enrolment_required`); `sso_required`", body = crate::routes::mfa::MfaRequiredBody),
        (status = 429, description = "too many attempts for this account or address (`too_many_attempts`, `Retry-After`)", body = crate::error::ErrorBody),
    ))]
pub async fn sign_in(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: PasswordRequest = json_body(&headers, &body)?;
    crate::routes::passwordless::check_origin(&state, &headers, req.project_id).await?;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let signed =
        state.identity.sign_in(req.project_id, &req.email, &req.password, &client_info(&headers, ip), ip).await?;
    Ok(crate::routes::mfa::sign_in_answer(signed, StatusCode::OK))
}

/// The form of `POST /v1/auth/token` (documentation only: the handler reads [`Form`]).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenForm {
    /// `client_credentials` (RFC 6749 4.4), `refresh_token` (6) or `authorization_code` (a
    /// hosted sign-in's code, 4.1.3).
    #[schema(pattern = "^(client_credentials|refresh_token|authorization_code)$")]
    grant_type: String,
    /// client_credentials: space-separated, each one of the client's scopes.
    #[schema(max_length = 4096)]
    scope: Option<String>,
    /// client_credentials: RFC 8707, an absolute URI without a fragment, the client's audience.
    #[schema(format = "uri", max_length = 512)]
    resource: Option<String>,
    /// client_credentials with `client_secret_post` (or HTTP Basic instead).
    client_id: Option<String>,
    client_secret: Option<String>,
    /// refresh_token: `rt_...`.
    refresh_token: Option<String>,
    /// authorization_code: the `sc_...` code, the redirect URI it was issued for, and the PKCE verifier.
    code: Option<String>,
    redirect_uri: Option<String>,
    #[schema(min_length = 43, max_length = 128)]
    code_verifier: Option<String>,
}

/// The form of introspection (RFC 7662) and revocation (RFC 7009).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenHintForm {
    token: String,
    /// `access_token` or `refresh_token` (a hint: every kind is looked up).
    token_type_hint: Option<String>,
    /// With `client_secret_post` (or HTTP Basic, or a project API key as a bearer token).
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// A form body as name/value pairs: `application/x-www-form-urlencoded` only, each parameter
/// at most once (RFC 6749 section 3.2), empty values treated as absent.
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    pub(crate) fn parse(headers: &HeaderMap, body: &Bytes) -> Result<Self, OAuthError> {
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
        if !is_form {
            return Err(OAuthError::invalid_request("expected Content-Type: application/x-www-form-urlencoded"));
        }
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_bytes(body).map_err(|_| OAuthError::invalid_request("malformed form body"))?;
        for (i, (k, _)) in pairs.iter().enumerate() {
            if pairs.iter().skip(i + 1).any(|(k2, _)| k2 == k) {
                return Err(OAuthError::invalid_request(format!("parameter {k} given more than once")));
            }
        }
        Ok(Form(pairs.into_iter().filter(|(_, v)| !v.is_empty()).collect()))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Client credentials from `client_secret_basic` or `client_secret_post` (never both).
pub(crate) fn client_credentials(headers: &HeaderMap, form: &Form) -> Result<Option<(String, String)>, OAuthError> {
    let basic = match headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        Some(v) if v.len() > 6 && v[..6].eq_ignore_ascii_case("basic ") => {
            let raw = STANDARD.decode(v[6..].trim()).map_err(|_| OAuthError::invalid_client())?;
            let raw = String::from_utf8(raw).map_err(|_| OAuthError::invalid_client())?;
            let (id, secret) = raw.split_once(':').ok_or_else(OAuthError::invalid_client)?;
            // RFC 6749 2.3.1: both parts are form-urlencoded before joining.
            Some((form_decode(id)?, form_decode(secret)?))
        }
        _ => None,
    };
    let post = match (form.get("client_id"), form.get("client_secret")) {
        (Some(id), Some(secret)) => Some((id.to_owned(), secret.to_owned())),
        (None, Some(_)) => return Err(OAuthError::invalid_request("client_secret without client_id")),
        _ => None,
    };
    match (basic, post) {
        (Some(_), Some(_)) => Err(OAuthError::invalid_request("use one client authentication method, not two")),
        (b, p) => Ok(b.or(p)),
    }
}

fn form_decode(s: &str) -> Result<String, OAuthError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(&format!("v={s}")).map_err(|_| OAuthError::invalid_client())?;
    pairs.into_iter().next().map(|(_, v)| v).ok_or_else(OAuthError::invalid_client)
}

#[derive(Serialize, ToSchema)]
pub struct ClientTokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    /// The granted scopes, space-separated (absent when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl From<ClientToken> for ClientTokenResponse {
    fn from(t: ClientToken) -> Self {
        ClientTokenResponse {
            access_token: t.access_token,
            token_type: t.token_type.to_owned(),
            expires_in: t.expires_in,
            scope: (!t.scope.is_empty()).then_some(t.scope),
        }
    }
}

/// The token endpoint: `grant_type=client_credentials` (M2M; `client_secret_basic` or
/// `client_secret_post`), `grant_type=refresh_token` (rotates the refresh token), or
/// `grant_type=authorization_code` (a hosted sign-in's code, with `redirect_uri` and the PKCE
/// `code_verifier`).
#[utoipa::path(post, path = "/v1/auth/token", tag = "auth",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "a token (client credentials) or a token pair (refresh)", body = ClientTokenResponse),
        (status = 400, description = "`invalid_request`, `unsupported_grant_type`, `invalid_scope`, `invalid_grant`", body = crate::error::OAuthErrorBody),
        (status = 401, description = "`invalid_client`, with `WWW-Authenticate: Basic`", body = crate::error::OAuthErrorBody),
        (status = 429, description = "`temporarily_unavailable` after too many failed client authentications", body = crate::error::OAuthErrorBody),
    ))]
pub async fn token(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let form = Form::parse(&headers, &body)?;
    match form.get("grant_type") {
        None => Err(OAuthError::invalid_request("grant_type is required")),
        Some("client_credentials") => {
            let (id, secret) = client_credentials(&headers, &form)?.ok_or_else(OAuthError::invalid_client)?;
            let ip = client_ip(&state, connect.as_ref(), &headers);
            let t =
                state.identity.client_credentials(&id, &secret, form.get("scope"), form.get("resource"), ip).await?;
            Ok(no_store(StatusCode::OK, Json(ClientTokenResponse::from(t))))
        }
        Some("refresh_token") => {
            let presented =
                form.get("refresh_token").ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
            let ip = client_ip(&state, connect.as_ref(), &headers);
            // Switch the session to one of the user's organizations (an active member only).
            let organization = match form.get("organization_id") {
                None => None,
                Some(o) => Some(
                    uuid::Uuid::parse_str(o)
                        .map_err(|_| OAuthError::invalid_request("organization_id must be a UUID"))?,
                ),
            };
            let req = authio_core::identity::auth::RefreshRequest { presented, organization, ..Default::default() };
            let who = authio_core::identity::signin::Guesser::Address(ip);
            let t = state.identity.refresh_for(req, &client_info(&headers, ip), &who).await?;
            Ok(no_store(StatusCode::OK, Json(TokenResponse::from(t))))
        }
        Some("authorization_code") => {
            // The code a hosted sign-in handed to the app, with the verifier of its PKCE challenge.
            let code = form.get("code").ok_or_else(|| OAuthError::invalid_request("code is required"))?;
            let redirect_uri =
                form.get("redirect_uri").ok_or_else(|| OAuthError::invalid_request("redirect_uri is required"))?;
            let verifier =
                form.get("code_verifier").ok_or_else(|| OAuthError::invalid_request("code_verifier is required"))?;
            let ip = client_ip(&state, connect.as_ref(), &headers);
            let t = state
                .oidc
                .exchange_code(
                    authio_core::oidc::CodeExchange {
                        code,
                        redirect_uri,
                        verifier: Some(verifier),
                        client: None,
                        resource: form.get("resource"),
                    },
                    &client_info(&headers, ip),
                    ip,
                )
                .await?;
            Ok(no_store(StatusCode::OK, Json(TokenResponse::from(t.tokens))))
        }
        Some(_) => Err(OAuthError::unsupported_grant_type("client_credentials, refresh_token, authorization_code")),
    }
}

/// Who is calling introspection or revocation: a client of the project, or a project API key
/// (`Authorization: Bearer sk_...`).
async fn caller(
    state: &AppState,
    headers: &HeaderMap,
    form: &Form,
    ip: Option<IpAddr>,
) -> Result<Option<Caller>, OAuthError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    if let Some(key) = bearer {
        let scope = state.identity.authenticate_api_key(key.trim(), ip).await.map_err(|e| match e {
            CoreError::InvalidApiKey => OAuthError::invalid_client(),
            other => other.into(),
        })?;
        return Ok(scope.project_id.map(|project_id| Caller { project_id }));
    }
    match client_credentials(headers, form)? {
        Some((id, secret)) => {
            let client = state.identity.authenticate_client(&id, &secret, ip).await?;
            Ok(Some(Caller { project_id: client.project_id }))
        }
        None => Ok(None),
    }
}

/// RFC 7662: is this token active, and what does it say? The caller (a client of the
/// project or a project API key) sees only its own project's tokens.
#[utoipa::path(post, path = "/v1/auth/introspect", tag = "auth",
    request_body(content = TokenHintForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "`{\"active\": false}` for any token that is not a live token of the caller's project"),
        (status = 401, description = "`invalid_client`", body = crate::error::OAuthErrorBody),
    ))]
pub async fn introspect(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let form = Form::parse(&headers, &body)?;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let caller = caller(&state, &headers, &form, ip).await?.ok_or_else(OAuthError::invalid_client)?;
    let token = form.get("token").ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    let answer: Introspection = state.identity.introspect(caller, token).await?;
    Ok(no_store(StatusCode::OK, Json(answer)))
}

/// RFC 7009: revoke a refresh token (ends its session) or an access token. Unknown and
/// invalid tokens get the same 200. Client authentication is optional (possession of the
/// token is enough); when given it must be right, and limits revocation to its project.
#[utoipa::path(post, path = "/v1/auth/revoke", tag = "auth",
    request_body(content = TokenHintForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "revoked, or nothing to revoke"),
        (status = 401, description = "`invalid_client`", body = crate::error::OAuthErrorBody),
    ))]
pub async fn revoke(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let form = Form::parse(&headers, &body)?;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let caller = caller(&state, &headers, &form, ip).await?;
    let token = form.get("token").ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    state.identity.revoke(caller, token, &client_info(&headers, ip)).await?;
    Ok(no_store(StatusCode::OK, ()))
}

/// The project's JSON Web Key Set: the current key, the next key (published before it signs
/// anything), and retired keys until the tokens they signed have expired.
#[utoipa::path(get, path = "/p/{project_id}/.well-known/jwks.json", tag = "auth",
    params(("project_id" = Uuid, Path, description = "the project")),
    responses(
        (status = 200, description = "the key set; `Cache-Control: public, max-age=300`; `ETag`"),
        (status = 304, description = "unchanged since `If-None-Match`"),
        (status = 404, description = "unknown project", body = crate::error::ErrorBody),
    ))]
pub async fn jwks(
    State(state): State<AppState>,
    axum::extract::Path(project_id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let project =
        Uuid::parse_str(&project_id).map_err(|_| ApiError::not_found("project_not_found", "project not found"))?;
    let profile = state.identity.profile(project).await?;
    let keys = state.identity.keys().keyset(&profile).await?;
    let cache = HeaderValue::from_static("public, max-age=300, stale-while-revalidate=60");
    let etag = HeaderValue::from_str(&keys.etag).map_err(|_| ApiError::from(CoreError::Internal("etag".into())))?;
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == keys.etag));
    if unchanged {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [
                (header::CACHE_CONTROL, cache),
                (header::ETAG, etag),
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*")),
            ],
        )
            .into_response());
    }
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/jwk-set+json")),
            (header::CACHE_CONTROL, cache),
            (header::ETAG, etag),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*")),
        ],
        keys.jwks.clone(),
    )
        .into_response())
}
