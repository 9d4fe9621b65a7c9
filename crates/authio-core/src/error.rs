//! The core layer's error: domain failures with a stable machine-readable code, and the
//! data layer's failures passed through. HTTP status codes are chosen at the edge.
use authio_db::{DbError, RouterError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CoreError {
    #[error("{0}")]
    Invalid(#[from] crate::types::ValidationError),
    #[error("a user with this email already exists in this project")]
    EmailTaken,
    #[error("a tenant with this slug already exists")]
    SlugTaken,
    #[error("{0} not found")]
    NotFound(crate::types::Entity),
    #[error("the API key is invalid or revoked")]
    InvalidApiKey,
    /// Wrong email or password; the same for an unknown account.
    #[error("the email or password is incorrect")]
    InvalidCredentials,
    /// Client authentication failed (unknown client, wrong secret, revoked client).
    #[error("client authentication failed")]
    InvalidClient,
    /// A client that presented its credentials in another way than it registered (the
    /// registered method, which is no secret, is named so the developer can fix the call).
    #[error("client authentication failed: this client authenticates with {0}")]
    WrongClientAuthMethod(&'static str),
    /// A refresh token that is unknown, used, expired, or whose session is over.
    #[error("{0}")]
    InvalidGrant(&'static str),
    #[error("the requested scope is not allowed for this client")]
    InvalidScope,
    /// RFC 8707 2: a `resource` that is malformed or not this client's.
    #[error("{0}")]
    InvalidTarget(&'static str),
    /// A bearer token that does not verify.
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    /// A token of the wrong kind (platform where customer belongs, or the reverse).
    #[error("this token's kind is not accepted here")]
    TokenKindRefused,
    #[error("{0}")]
    Forbidden(&'static str),
    /// A role some membership still has.
    #[error("members have this role: give them another first")]
    RoleInUse,
    /// A role names a permission the project has not defined.
    #[error("the permission {0} is not defined in this project")]
    UndefinedPermission(String),
    /// A switch to an organization the user is not an active member of.
    #[error("the user is not an active member of this organization")]
    NotAMember,
    /// An invitation that was accepted, revoked or replaced by a resend (`used`, `revoked`), or
    /// whose time ran out (`expired`).
    #[error("this invitation {0}")]
    InvitationUnusable(InvitationState),
    /// An invitation accepted by a user signed in with another address than the invited one.
    #[error("this invitation is for another email address: sign in with the invited one")]
    InvitationEmailMismatch,
    /// Impersonation of someone who may not be impersonated, or by someone who may not.
    #[error("{0}")]
    ImpersonationRefused(&'static str),
    /// The account belongs to an organization whose people sign in only through its own
    /// identity provider (single sign-on).
    #[error("this account signs in through its organization's single sign-on")]
    SsoRequired,
    /// A sign-in method the project has turned off (`signin_methods`).
    #[error("the sign-in method {0} is not enabled for this project")]
    MethodNotEnabled(String),
    /// The project's sign-up policy does not admit this address (or anyone, if invite-only).
    #[error("this project does not accept sign-ups from this address")]
    SignupNotAllowed,
    #[error("too many attempts; retry in {retry_after} s")]
    RateLimited { retry_after: u32 },
    /// An operation that must wait (for example a key rotation too soon after the last).
    #[error("{0}")]
    TooSoon(String),
    /// The request conflicts with the current state (for example an ambiguous match).
    #[error("{0}")]
    Conflict(String),
    /// Every hashing slot is taken for longer than the configured wait.
    #[error("busy; retry shortly")]
    Busy,
    /// A redirect URI that is malformed or not registered for the project.
    #[error("the redirect URI is not registered for this project")]
    InvalidRedirectUri,
    /// An email code challenge that had its allowed attempts.
    #[error("too many wrong codes: ask for a new one")]
    ChallengeLocked,
    /// RFC 7591 3.2.2: client metadata (a registration, or a metadata document) that cannot
    /// be accepted.
    #[error("{0}")]
    InvalidClientMetadata(&'static str),
    /// A second factor with too many failed attempts: locked for the rest of the window,
    /// right code or not.
    #[error("too many wrong codes for this factor; retry in {retry_after} s")]
    FactorLocked { retry_after: u32 },
    /// The sign-in needs a second factor before a session (the JSON API answers with a token
    /// to continue with).
    #[error("a second factor is required")]
    MfaRequired,
    /// An upstream provider (or DNS) could not be reached or answered nonsense.
    #[error("upstream provider error: {0}")]
    Upstream(String),
    /// An upstream sign-in that must not complete (state, nonce, signature, unverified email).
    #[error("{0}")]
    UpstreamRefused(&'static str),
    /// The domain's TXT record was not found: (record name, expected value).
    #[error("TXT record {0} with value {1} not found")]
    DomainNotVerified(String, String),
    /// The deployment's configuration is unusable (a URL, a parameter, a missing key).
    #[error("configuration error: {0}")]
    Config(String),
    /// Something that should not happen did (a query without its row, a sealing failure).
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Why an invitation can no longer be accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvitationState {
    Used,
    Revoked,
    Expired,
}

impl InvitationState {
    /// The API's error code.
    pub fn code(self) -> &'static str {
        match self {
            InvitationState::Used => "invitation_used",
            InvitationState::Revoked => "invitation_revoked",
            InvitationState::Expired => "invitation_expired",
        }
    }
}

impl std::fmt::Display for InvitationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InvitationState::Used => "was already accepted",
            InvitationState::Revoked => "was revoked or replaced by a newer one",
            InvitationState::Expired => "has expired: ask for a new one",
        })
    }
}

impl From<RouterError> for CoreError {
    fn from(e: RouterError) -> Self {
        CoreError::Db(DbError::Router(e))
    }
}

impl From<tokio_postgres::Error> for CoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        CoreError::Db(DbError::Postgres(e))
    }
}
