//! Each project as an OpenID Provider, issuer `{public_url}/p/{project}`: discovery,
//! authorization (the sign-in itself on the hosted pages), token, userinfo, revocation,
//! introspection and RP-initiated logout; and client registration over the management API.
use authio_core::authz::Permission;
use std::net::SocketAddr;

use authio_core::identity::mfa::MfaNeed;
use authio_core::identity::signin::{Return, SignedInUser};
use authio_core::oidc::{self, AuthorizeParams, AuthzError, NewOidcClient, OidcClient, OidcClientInfo};
use authio_core::CoreError;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::OAuthError;
use crate::extract::json_body;
use crate::routes::auth::{client_credentials, client_info, client_ip, no_store, Form};
use crate::routes::hosted::{self, cookie, secure_headers, set_op_cookie, CustomHost, OP_COOKIE};
use crate::{ApiError, AppState, RequestContext};

fn project_of(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("project_not_found", "project not found"))
}

/// OpenID Connect Discovery 1.0.
#[utoipa::path(get, path = "/p/{project_id}/.well-known/openid-configuration", tag = "openid",
    params(("project_id" = Uuid, Path)), responses((status = 200, description = "the provider's metadata")))]
pub async fn discovery(State(state): State<AppState>, Path(project): Path<String>) -> Result<Response, ApiError> {
    metadata(&state, &project).await
}

/// RFC 8414 authorization-server metadata, at the well-known URI formed from the issuer
/// (`{public_url}/p/{project}`) by RFC 8414 section 3.1: the well-known suffix goes between
/// the host and the issuer's path. The same document as discovery (RFC 8414 section 2 takes
/// OpenID's metadata names), with the same `issuer`.
#[utoipa::path(get, path = "/.well-known/oauth-authorization-server/p/{project_id}", tag = "openid",
    params(("project_id" = Uuid, Path)),
    responses((status = 200, description = "the authorization server's metadata"),
              (status = 404, description = "`project_not_found`", body = crate::error::ErrorBody)))]
pub async fn authorization_server_metadata(
    State(state): State<AppState>,
    Path(project): Path<String>,
) -> Result<Response, ApiError> {
    metadata(&state, &project).await
}

async fn metadata(state: &AppState, project: &str) -> Result<Response, ApiError> {
    let project = project_of(project)?;
    let iss = state.identity.issuer(project);
    let id_token_algs = state.oidc.id_token_algs(project).await?;
    let presentation = state.identity.presentation(project).await?;
    let mut doc = serde_json::json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/oauth2/authorize"),
        "token_endpoint": format!("{iss}/oauth2/token"),
        "userinfo_endpoint": format!("{iss}/oauth2/userinfo"),
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "revocation_endpoint": format!("{iss}/oauth2/revoke"),
        "introspection_endpoint": format!("{iss}/oauth2/introspect"),
        "end_session_endpoint": format!("{iss}/oauth2/logout"),
        "scopes_supported": oidc::SCOPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": oidc::GRANTS,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": id_token_algs,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "at_hash", "amr", "acr", "sid",
                             "azp", "email", "email_verified", "updated_at", "org_id"],
        "acr_values_supported": oidc::ACR_VALUES,
        "prompt_values_supported": ["none", "login"],
        "authorization_response_iss_parameter_supported": true,
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
    });
    // Clients the project's administrators did not register, where the project accepts them.
    if presentation.dynamic_registration {
        doc["registration_endpoint"] = serde_json::Value::String(format!("{iss}/oauth2/register"));
    }
    if presentation.metadata_document_clients {
        doc["client_id_metadata_document_supported"] = serde_json::Value::Bool(true);
    }
    Ok((
        StatusCode::OK,
        [(header::CACHE_CONTROL, "public, max-age=300"), (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
        Json(doc),
    )
        .into_response())
}

fn text_page(status: StatusCode, message: &str) -> Response {
    let mut resp = (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message.to_owned()).into_response();
    secure_headers(resp.headers_mut());
    resp
}

fn see_other(location: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(resp.headers_mut());
    resp
}

fn prefix_of(project: Uuid, custom: Option<&Extension<CustomHost>>) -> String {
    if custom.is_some() {
        String::new()
    } else {
        format!("/p/{project}")
    }
}

/// The authorization endpoint (OIDC Core 3.1.2). A request that cannot be trusted with its
/// redirect (unknown client, unregistered URI) gets a page; other errors go back to the
/// client. A browser signed in at the provider gets its code at once; otherwise it signs in on
/// the hosted pages and comes back here.
#[utoipa::path(get, path = "/p/{project_id}/oauth2/authorize", tag = "openid",
    params(("project_id" = Uuid, Path)),
    responses((status = 303, description = "to the client with `code`, `state`, `iss`, or an `error`; or to the sign-in page"),
              (status = 400, description = "a page: unknown client or unregistered redirect_uri")))]
pub async fn authorize(
    State(state): State<AppState>,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let Ok(project) = Uuid::parse_str(&project) else {
        return text_page(StatusCode::NOT_FOUND, "project not found");
    };
    let query = query.unwrap_or_default();
    let params: AuthorizeParams = match serde_urlencoded::from_str(&query) {
        Ok(p) => p,
        Err(_) => return text_page(StatusCode::BAD_REQUEST, "The authorization request is malformed."),
    };
    let iss = state.identity.issuer(project);
    // A client named by a URL may make the server fetch its metadata document: such requests
    // count against the address like sign-in attempts.
    if params.client_id.as_deref().is_some_and(|c| c.starts_with("https://") || c.starts_with("http://")) {
        if let Err(e) = state.identity.limit_attempts(client_ip(&state, connect.as_ref(), &headers)).await {
            return ApiError::from(e).into_response();
        }
    }
    let req = match state.oidc.authorization_request(project, &params).await {
        Ok(r) => r,
        Err(e) => {
            return match (e.location(&iss), e) {
                (Some(l), _) => see_other(&l),
                (None, AuthzError::Page(m)) => {
                    text_page(StatusCode::BAD_REQUEST, &format!("This sign-in request cannot be served: {m}."))
                }
                (None, _) => text_page(StatusCode::BAD_REQUEST, "This sign-in request cannot be served."),
            }
        }
    };
    let fail = |error: &'static str, description: &'static str| {
        let e = AuthzError::Redirect {
            redirect_uri: req.redirect_uri.clone(),
            error,
            description,
            state: req.state.clone(),
        };
        see_other(&e.location(&iss).unwrap_or_default())
    };
    let session = cookie(&headers, OP_COOKIE).and_then(|c| state.oidc.read_op_session(&c));
    let usable = match state.oidc.usable_op_session(&req, session.as_ref()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "authorization: session check failed");
            return fail("temporarily_unavailable", "try again shortly");
        }
    };
    if let Some(s) = usable {
        // A second factor the sign-in has not passed: the user's own (or policy's), or one the
        // client demands (`acr_values=aal2`). Step-up on this session: the challenge (or an
        // enrolment), then back here.
        if !s.amr.iter().any(|a| a == "mfa") {
            let scope = match state.identity.project_scope(project).await {
                Ok(scope) => scope,
                Err(e) => {
                    tracing::warn!(error = %e, "authorization: project not read");
                    return fail("temporarily_unavailable", "try again shortly");
                }
            };
            let user = SignedInUser { user_id: s.user_id, role: None, created: false };
            let prefix = prefix_of(project, custom.as_ref());
            let return_to = format!("{prefix}/oauth2/authorize?{query}");
            let step_up = match Return::authorize(project, &return_to) {
                // OIDC Core 3.1.2.6: a request that may not interact says so (and nothing waits).
                Ok(_) if req.prompt_none => match state.identity.mfa_need(&scope, s.user_id).await {
                    Ok(MfaNeed::None) if !req.require_mfa => Ok(None),
                    Ok(_) => return fail("interaction_required", "a second factor is required"),
                    Err(e) => Err(e),
                },
                Ok(ret) => {
                    let amr: Vec<&str> = s.amr.iter().map(String::as_str).collect();
                    state.identity.begin_step_up(&scope, &user, &amr, &ret, req.require_mfa).await
                }
                Err(e) => Err(e),
            };
            match step_up {
                Ok(None) => {}
                Ok(Some(pending)) => return hosted::mfa::step_up(&state, project, custom.as_ref(), &pending),
                Err(e) => {
                    tracing::warn!(error = %e, "authorization: step-up not started");
                    return fail("temporarily_unavailable", "try again shortly");
                }
            }
        }
        // A third-party client (registered by itself, not by the project's administrators)
        // needs the user's consent for this resource and these scopes.
        if req.client.third_party() {
            let consented = match state.identity.project_scope(project).await {
                Ok(scope) => {
                    let resource = req.resource.clone().unwrap_or_default();
                    state.identity.consented(&scope, s.user_id, &req.client.client_id, &resource, &req.scope).await
                }
                Err(e) => Err(e),
            };
            match consented {
                Ok(true) if !req.prompt_consent => {}
                // OIDC Core 3.1.2.6.
                Ok(_) if req.prompt_none => return fail("consent_required", "the user has not consented"),
                Ok(_) => {
                    // Back here without `prompt` once answered (the consent just given is fresh).
                    let again: Vec<(String, String)> = serde_urlencoded::from_str::<Vec<(String, String)>>(&query)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|(k, _)| k != "prompt")
                        .collect();
                    let prefix = prefix_of(project, custom.as_ref());
                    let return_to = format!(
                        "{prefix}/oauth2/authorize?{}",
                        serde_urlencoded::to_string(&again).unwrap_or_default()
                    );
                    let q = serde_urlencoded::to_string([("return_to", return_to.as_str())]).unwrap_or_default();
                    return see_other(&format!("{prefix}/consent?{q}"));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "authorization: consent not read");
                    return fail("temporarily_unavailable", "try again shortly");
                }
            }
        }
        let mut req = req.clone();
        // Scope `organization` without a named one: the only organization the user is an
        // active member of, or the hosted picker when there is a choice to make (several, or
        // one to join by its domain policy).
        if req.organization.is_none() && req.scope.iter().any(|x| x == "organization") {
            let choices = match state.identity.project_scope(project).await {
                Ok(scope) => authio_core::orgs::choices_for(&state.router, &scope, s.user_id).await,
                Err(e) => Err(e),
            };
            match choices {
                Ok(c) if c.len() == 1 && !c[0].joins => req.organization = Some(c[0].id),
                // OIDC Core 3.1.2.6: a request that may not interact says so rather than show
                // the picker.
                Ok(c) if !c.is_empty() && req.prompt_none => {
                    return fail("interaction_required", "the user must choose an organization");
                }
                Ok(c) if !c.is_empty() => {
                    let prefix = prefix_of(project, custom.as_ref());
                    let return_to = format!("{prefix}/oauth2/authorize?{query}");
                    let q = serde_urlencoded::to_string([("return_to", return_to.as_str())]).unwrap_or_default();
                    return see_other(&format!("{prefix}/organizations/select?{q}"));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "authorization: organizations not read");
                    return fail("temporarily_unavailable", "try again shortly");
                }
            }
        }
        return match state.oidc.issue_authorization_code(&req, &s).await {
            Ok(location) => see_other(&location),
            Err(authio_core::CoreError::NotAMember) => {
                fail("access_denied", "the user is not an active member of that organization")
            }
            Err(e) => {
                tracing::warn!(error = %e, "authorization: code not issued");
                fail("server_error", "the code could not be issued")
            }
        };
    }
    if req.prompt_none {
        return fail("login_required", "the user is not signed in");
    }
    // Sign in on the hosted pages, then come back here without `prompt` (the sign-in just
    // happened, so `login` and `max_age` are satisfied).
    let again: Vec<(String, String)> = serde_urlencoded::from_str::<Vec<(String, String)>>(&query)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != "prompt")
        .collect();
    let prefix = prefix_of(project, custom.as_ref());
    let return_to = format!("{prefix}/oauth2/authorize?{}", serde_urlencoded::to_string(&again).unwrap_or_default());
    let mut next = vec![("return_to", return_to.as_str())];
    if let Some(h) = req.login_hint.as_deref() {
        next.push(("login_hint", h));
    }
    see_other(&format!("{prefix}/signin?{}", serde_urlencoded::to_string(&next).unwrap_or_default()))
}

/// How a client authenticated at an endpoint: Basic, a posted secret, or (public) its id alone.
async fn authenticate(
    state: &AppState,
    project: Uuid,
    headers: &HeaderMap,
    form: &Form,
    ip: Option<std::net::IpAddr>,
) -> Result<OidcClient, OAuthError> {
    let basic = headers.get(header::AUTHORIZATION).is_some();
    let (id, secret, method) = match client_credentials(headers, form)? {
        Some((id, secret)) => (id, Some(secret), if basic { "client_secret_basic" } else { "client_secret_post" }),
        None => match form.get("client_id") {
            Some(id) => (id.to_owned(), None, "none"),
            None => return Err(OAuthError::invalid_client()),
        },
    };
    let client = state.oidc.authenticate_oidc_client(project, &id, secret.as_deref(), method, ip).await?;
    if client.project_id != project {
        return Err(OAuthError::invalid_client());
    }
    Ok(client)
}

/// The form of a project's token endpoint (documentation only).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct OidcTokenForm {
    /// `authorization_code` (OIDC Core 3.1.3.1) or `refresh_token` (RFC 6749 6).
    #[schema(pattern = "^(authorization_code|refresh_token)$")]
    grant_type: String,
    code: Option<String>,
    /// Exactly the one of the authorization request.
    redirect_uri: Option<String>,
    /// RFC 7636: 43-128 characters.
    #[schema(min_length = 43, max_length = 128)]
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    /// RFC 8707: one of the client's registered resources; the access token's `aud`.
    #[schema(format = "uri", max_length = 512)]
    resource: Option<String>,
    /// `client_secret_post` clients (`client_secret_basic` ones use HTTP Basic); public
    /// clients send `client_id` alone.
    client_id: Option<String>,
    client_secret: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct OidcTokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// With `offline_access` (rotates on every use).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    pub scope: String,
}

/// The token endpoint: `authorization_code` (with `redirect_uri` and, when the request had a
/// challenge, `code_verifier`) and `refresh_token`.
#[utoipa::path(post, path = "/p/{project_id}/oauth2/token", tag = "openid",
    params(("project_id" = Uuid, Path)),
    request_body(content = OidcTokenForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = OidcTokenResponse), (status = 400, body = crate::error::OAuthErrorBody), (status = 401, body = crate::error::OAuthErrorBody)))]
pub async fn token(
    State(state): State<AppState>,
    Path(project): Path<String>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let project = Uuid::parse_str(&project).map_err(|_| OAuthError::invalid_client())?;
    let form = Form::parse(&headers, &body)?;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let info = client_info(&headers, ip);
    let grant = form.get("grant_type").ok_or_else(|| OAuthError::invalid_request("grant_type is required"))?;
    let client = authenticate(&state, project, &headers, &form, ip).await?;
    if !client.allows_grant(grant) {
        return Err(match grant {
            "authorization_code" | "refresh_token" => OAuthError::unauthorized_client(),
            _ => OAuthError::unsupported_grant_type("authorization_code, refresh_token"),
        });
    }
    match grant {
        "authorization_code" => {
            let code = form.get("code").ok_or_else(|| OAuthError::invalid_request("code is required"))?;
            let redirect_uri =
                form.get("redirect_uri").ok_or_else(|| OAuthError::invalid_request("redirect_uri is required"))?;
            let t = state
                .oidc
                .exchange_code(
                    oidc::CodeExchange {
                        code,
                        redirect_uri,
                        verifier: form.get("code_verifier"),
                        client: Some(&client),
                        resource: form.get("resource"),
                    },
                    &info,
                    ip,
                )
                .await?;
            let refresh = (t.offline && client.allows_grant("refresh_token")).then_some(t.tokens.refresh_token);
            Ok(no_store(
                StatusCode::OK,
                Json(OidcTokenResponse {
                    access_token: t.tokens.access_token,
                    token_type: "Bearer".into(),
                    expires_in: t.tokens.expires_in,
                    id_token: t.id_token,
                    refresh_token: refresh,
                    scope: t.scope,
                }),
            ))
        }
        "refresh_token" => {
            let presented =
                form.get("refresh_token").ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
            let who = authio_core::oidc::refresh_guesser(&client, presented, ip);
            let resource = state.oidc.allowed_resource(&client, form.get("resource")).await?.map(|(uri, _)| uri);
            let req = authio_core::identity::auth::RefreshRequest {
                presented,
                oidc_client: Some(&client.client_id),
                resource: resource.as_deref(),
                organization: None,
                consented_resource_only: client.third_party(),
            };
            let t = state.identity.refresh_for(req, &info, &who).await?;
            Ok(no_store(
                StatusCode::OK,
                Json(OidcTokenResponse {
                    access_token: t.access_token,
                    token_type: "Bearer".into(),
                    expires_in: t.expires_in,
                    id_token: None,
                    refresh_token: Some(t.refresh_token),
                    scope: t.scope.unwrap_or_default(),
                }),
            ))
        }
        _ => Err(OAuthError::unsupported_grant_type("authorization_code, refresh_token")),
    }
}

/// OIDC Core 5.3: the signed-in user's claims, by the access token's scopes.
#[utoipa::path(get, path = "/p/{project_id}/oauth2/userinfo", tag = "openid",
    params(("project_id" = Uuid, Path)),
    responses((status = 200, description = "sub, and email and email_verified with the email scope"),
              (status = 401, description = "`WWW-Authenticate: Bearer error=\"invalid_token\"`")))]
pub async fn userinfo(State(state): State<AppState>, Path(project): Path<String>, headers: HeaderMap) -> Response {
    userinfo_answer(state, project, headers).await
}

/// The same by POST (OIDC Core 5.3.1: the provider accepts both), the access token in the
/// `Authorization` header.
#[utoipa::path(post, path = "/p/{project_id}/oauth2/userinfo", tag = "openid",
    params(("project_id" = Uuid, Path)),
    responses((status = 200, description = "sub, and email and email_verified with the email scope"),
              (status = 401, description = "`WWW-Authenticate: Bearer error=\"invalid_token\"`")))]
pub async fn userinfo_post(State(state): State<AppState>, Path(project): Path<String>, headers: HeaderMap) -> Response {
    userinfo_answer(state, project, headers).await
}

async fn userinfo_answer(state: AppState, project: String, headers: HeaderMap) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let refused = |status: StatusCode, challenge: &'static str| {
        let mut r = status.into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    };
    let Some(token) = bearer else {
        return refused(StatusCode::UNAUTHORIZED, "Bearer");
    };
    let Ok(project) = Uuid::parse_str(&project) else {
        return refused(StatusCode::UNAUTHORIZED, "Bearer error=\"invalid_token\"");
    };
    match state.oidc.userinfo(project, token).await {
        Ok(claims) => no_store(StatusCode::OK, Json(claims)),
        Err(CoreError::InvalidToken(_) | CoreError::TokenKindRefused) => {
            refused(StatusCode::UNAUTHORIZED, "Bearer error=\"invalid_token\"")
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// RFC 7009 for the project's clients.
#[utoipa::path(post, path = "/p/{project_id}/oauth2/revoke", tag = "openid",
    params(("project_id" = Uuid, Path)),
    request_body(content = crate::routes::auth::TokenHintForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "revoked, or nothing to revoke")))]
pub async fn revoke(
    State(state): State<AppState>,
    Path(project): Path<String>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let project = Uuid::parse_str(&project).map_err(|_| OAuthError::invalid_client())?;
    let form = Form::parse(&headers, &body)?;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    authenticate(&state, project, &headers, &form, ip).await?;
    let token = form.get("token").ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    let caller = authio_core::identity::auth::Caller { project_id: project };
    state.identity.revoke(Some(caller), token, &client_info(&headers, ip)).await?;
    Ok(no_store(StatusCode::OK, ()))
}

/// RFC 7662 for the project's confidential clients.
#[utoipa::path(post, path = "/p/{project_id}/oauth2/introspect", tag = "openid",
    params(("project_id" = Uuid, Path)),
    request_body(content = crate::routes::auth::TokenHintForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "RFC 7662 answer")))]
pub async fn introspect(
    State(state): State<AppState>,
    Path(project): Path<String>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let project = Uuid::parse_str(&project).map_err(|_| OAuthError::invalid_client())?;
    let form = Form::parse(&headers, &body)?;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let client = authenticate(&state, project, &headers, &form, ip).await?;
    if client.public {
        return Err(OAuthError::invalid_client());
    }
    let token = form.get("token").ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    let answer = state.identity.introspect(authio_core::identity::auth::Caller { project_id: project }, token).await?;
    Ok(no_store(StatusCode::OK, Json(answer)))
}

#[derive(serde::Deserialize, Default)]
pub struct LogoutParams {
    id_token_hint: Option<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
    client_id: Option<String>,
}

/// OpenID Connect RP-Initiated Logout 1.0: the provider session cookie is cleared, the
/// session named by `id_token_hint` ends, and the browser returns to a registered
/// `post_logout_redirect_uri` (else a page says it is signed out).
#[utoipa::path(get, path = "/p/{project_id}/oauth2/logout", tag = "openid",
    params(("project_id" = Uuid, Path)),
    responses((status = 303, description = "to the registered post_logout_redirect_uri"), (status = 200, description = "signed out")))]
pub async fn logout(
    State(state): State<AppState>,
    Path(project): Path<String>,
    axum::extract::Query(p): axum::extract::Query<LogoutParams>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let Ok(project) = Uuid::parse_str(&project) else {
        return text_page(StatusCode::NOT_FOUND, "project not found");
    };
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let mut audience = p.client_id.clone();
    if let Some(hint) = &p.id_token_hint {
        match state.oidc.end_session(project, hint, &client_info(&headers, ip)).await {
            Ok(aud) => audience = Some(aud),
            Err(CoreError::InvalidToken(_)) => {
                return text_page(StatusCode::BAD_REQUEST, "The logout request's id_token_hint is not valid.")
            }
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    let target = match (&p.post_logout_redirect_uri, audience) {
        (Some(uri), Some(client_id)) => match state.oidc.client_for(project, &client_id).await {
            Ok(Some(c)) if c.project_id == project && !c.blocked && c.post_logout_redirect_uris.contains(uri) => {
                Some(uri.clone())
            }
            Ok(_) => return text_page(StatusCode::BAD_REQUEST, "The post_logout_redirect_uri is not registered."),
            Err(e) => return ApiError::from(e).into_response(),
        },
        (Some(_), None) => {
            return text_page(
                StatusCode::BAD_REQUEST,
                "A post_logout_redirect_uri needs an id_token_hint or client_id.",
            )
        }
        _ => None,
    };
    let mut resp = match target {
        Some(uri) => {
            let state_param = p.state.as_deref().map(|s| vec![("state", s)]).unwrap_or_default();
            let location = if state_param.is_empty() {
                uri
            } else {
                authio_core::identity::signin::with_query(&uri, &state_param)
            };
            see_other(&location)
        }
        None => text_page(StatusCode::OK, "You are signed out."),
    };
    let secure = state.public_scheme == "https";
    set_op_cookie(resp.headers_mut(), &prefix_of(project, custom.as_ref()), "", secure, 0);
    resp
}

#[derive(Serialize, ToSchema)]
pub struct OidcClientList {
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<OidcClientInfo>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedOidcClient {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub client: OidcClientInfo,
    /// Confidential clients: shown once, only a hash is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

/// Register an OpenID client: `{"name", "client_type": "confidential|public", "redirect_uris",
/// "post_logout_redirect_uris"?, "token_endpoint_auth_method"?, "scopes"?, "grant_types"?}`.
#[utoipa::path(post, path = "/v1/projects/{project_id}/oidc-clients", tag = "openid",
    params(("project_id" = Uuid, Path)), security(("project_api_key" = [])), request_body(content = Object),
    responses((status = 201, body = CreatedOidcClient), (status = 422, description = "`invalid_request`")))]
pub async fn create_client(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedOidcClient>), ApiError> {
    let auth = ctx.authorize(Permission::CredentialsManage)?;
    let req: NewOidcClient = json_body(&headers, &body)?;
    let info = client_info(&headers, None);
    let (client, client_secret) = oidc::create_client(&state.router, state.clock.as_ref(), &auth, &req, &info).await?;
    Ok((StatusCode::CREATED, Json(CreatedOidcClient { client, client_secret })))
}

/// The project's OpenID clients (never their secrets).
#[utoipa::path(get, path = "/v1/projects/{project_id}/oidc-clients", tag = "openid",
    params(("project_id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = OidcClientList)))]
pub async fn list_clients(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
) -> Result<Json<OidcClientList>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectRead)?;
    Ok(Json(OidcClientList { data: oidc::list_clients(&state.router, &auth).await? }))
}

/// Revoke an OpenID client: it can no longer authenticate nor start sign-ins.
#[utoipa::path(delete, path = "/v1/projects/{project_id}/oidc-clients/{id}", tag = "openid",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = Object), (status = 404, description = "`client_not_found`")))]
pub async fn revoke_client(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<OidcClientInfo>, ApiError> {
    let auth = ctx.authorize(Permission::CredentialsManage)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("client_not_found", "client not found"))?;
    let info = client_info(&headers, None);
    Ok(Json(oidc::revoke_client(&state.router, state.clock.as_ref(), &auth, id, &info).await?))
}
