//! Domain newtypes that validate once: `Email`, `Slug`, `Plan`, `DisplayName`.
use std::fmt;

use serde::Serialize;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ValidationError {
    #[error("invalid email address: {0}")]
    Email(&'static str),
    #[error("invalid slug: use 1-63 lowercase letters, digits and inner hyphens")]
    Slug,
    #[error("invalid plan: expected free, pro or enterprise")]
    Plan,
    #[error("invalid name: 1-200 characters")]
    Name,
    #[error("invalid {0}")]
    Field(&'static str),
}

/// A normalised email address: trimmed and lower-cased, checked for shape (not deliverability).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Email(String);

impl Email {
    /// One spelling per address: trimmed, Unicode NFC (so NFC and NFD spellings are one
    /// account), lower case, and the domain in its ASCII (IDNA, UTS #46) form, so
    /// `bücher.example` and `xn--bcher-kva.example` are one domain. Look-alike characters
    /// (confusables) are not folded: distinct code points are distinct mailboxes, and the
    /// address is proved by mail before an account made from it signs in.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        use unicode_normalization::UnicodeNormalization;
        if raw.len() > 1024 {
            return Err(ValidationError::Email("longer than 254 characters"));
        }
        let s: String = raw.trim().nfc().collect::<String>().to_lowercase();
        let (local, domain) = s.rsplit_once('@').ok_or(ValidationError::Email("missing @"))?;
        if local.is_empty() || local.len() > 64 {
            return Err(ValidationError::Email("bad local part"));
        }
        if local.contains('@') {
            return Err(ValidationError::Email("more than one @"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>' || c == ',' || c == ';') {
            return Err(ValidationError::Email("forbidden character"));
        }
        let domain = if domain.is_ascii() {
            domain.to_owned()
        } else {
            match url::Host::parse(domain) {
                Ok(url::Host::Domain(d)) => d,
                _ => return Err(ValidationError::Email("bad domain")),
            }
        };
        let labels: Vec<&str> = domain.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        };
        if labels.len() < 2 || !labels.iter().all(label_ok) {
            return Err(ValidationError::Email("bad domain"));
        }
        let s = format!("{local}@{domain}");
        if s.len() > 254 {
            return Err(ValidationError::Email("longer than 254 characters"));
        }
        Ok(Email(s))
    }

    /// The part after the `@` (ASCII, lower case).
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map(|(_, d)| d).unwrap_or_default()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant or project slug: 1-63 of `[a-z0-9-]`, no leading or trailing hyphen.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Slug(String);

impl Slug {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let ok = !raw.is_empty()
            && raw.len() <= 63
            && !raw.starts_with('-')
            && !raw.ends_with('-')
            && raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Slug(raw.to_owned()))
        } else {
            Err(ValidationError::Slug)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    Free,
    Pro,
    Enterprise,
}

impl Plan {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw {
            "free" => Ok(Plan::Free),
            "pro" => Ok(Plan::Pro),
            "enterprise" => Ok(Plan::Enterprise),
            _ => Err(ValidationError::Plan),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Pro => "pro",
            Plan::Enterprise => "enterprise",
        }
    }
}

/// A human-readable name: trimmed, 1-200 characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let s = raw.trim();
        if s.is_empty() || s.chars().count() > 200 {
            return Err(ValidationError::Name);
        }
        Ok(DisplayName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The project a project-level operation acts on: a tenant-level scope has none.
fn is_loopback_host(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// A redirect URI as registered: absolute `https` (or `http` on a loopback host), no
/// fragment, no wildcard, at most 2048 characters. Compared as exact strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RedirectUri(String);

impl RedirectUri {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let bad = ValidationError::Field("redirect_uri (absolute https URL, or http on localhost; no fragment or *)");
        if raw.len() > 2048 || raw.contains('*') || raw.contains('#') || raw.trim() != raw {
            return Err(bad);
        }
        let url = url::Url::parse(raw).map_err(|_| bad.clone())?;
        let host = url.host_str().ok_or(bad.clone())?.to_owned();
        let ok = match url.scheme() {
            "https" => true,
            "http" => is_loopback_host(&host),
            _ => false,
        };
        // The parsed form must be what was given: no normalisation hides a mismatch later.
        if !ok || url.as_str() != raw && format!("{raw}/") != url.as_str() || !url.username().is_empty() {
            return Err(bad);
        }
        Ok(RedirectUri(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `self` (a URI a request presents) is one of `registered`: exact string match;
    /// in development projects a loopback `http` URI matches whatever its port (RFC 8252 7.3:
    /// native apps listen on an ephemeral port).
    pub fn is_registered(&self, registered: &[String], development: bool) -> bool {
        if registered.iter().any(|r| r == &self.0) {
            return true;
        }
        if !development {
            return false;
        }
        let Some(mine) = url::Url::parse(&self.0).ok().filter(|u| u.scheme() == "http") else { return false };
        let strip = |u: &url::Url| {
            let mut u = u.clone();
            let _ = u.set_port(None);
            u.to_string()
        };
        registered
            .iter()
            .filter_map(|r| url::Url::parse(r).ok())
            .any(|r| r.scheme() == "http" && r.host_str().is_some_and(is_loopback_host) && strip(&r) == strip(&mine))
    }
}

/// A web origin (`scheme://host[:port]`), as browsers send it in `Origin`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WebOrigin(String);

impl WebOrigin {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let bad = ValidationError::Field("origin (scheme://host[:port], https or http on localhost, no path)");
        let url = url::Url::parse(raw).map_err(|_| bad.clone())?;
        let host = url.host_str().ok_or(bad.clone())?;
        let ok = match url.scheme() {
            "https" => true,
            "http" => is_loopback_host(host),
            _ => false,
        };
        let origin = url.origin().ascii_serialization();
        if !ok || origin != raw || raw.contains('*') {
            return Err(bad);
        }
        Ok(WebOrigin(origin))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A host name a project may answer on (lower-case, dot-separated labels, no port).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DomainName(String);

impl DomainName {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let s = raw.trim().trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = s.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if s.len() > 253 || labels.len() < 2 || !labels.iter().all(label_ok) || s.parse::<std::net::Ipv4Addr>().is_ok()
        {
            return Err(ValidationError::Field("domain (a host name such as login.example.com)"));
        }
        Ok(DomainName(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An RFC 8707 resource indicator (section 2): an absolute URI without a fragment, at most 512
/// bytes.
pub fn resource_indicator_ok(r: &str) -> bool {
    r.len() <= 512 && url::Url::parse(r).is_ok_and(|u| u.fragment().is_none() && !u.cannot_be_a_base())
}

pub(crate) fn project_of(scope: &authio_db::Scope) -> Result<uuid::Uuid, crate::CoreError> {
    scope.project_id.ok_or(crate::CoreError::NotFound(crate::types::Entity::Project))
}

/// Where a session was started from.
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The request's `x-request-id`, for the audit log.
    pub request_id: Option<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_are_exact_https_or_loopback() {
        for ok in [
            "https://app.example.com/cb",
            "https://app.example.com/cb?x=1",
            "http://localhost:3000/cb",
            "http://127.0.0.1/cb",
        ] {
            assert!(RedirectUri::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://app.example.com/cb",
            "https://*.example.com/cb",
            "https://app.example.com/cb#frag",
            "javascript:alert(1)",
            "https://user@app.example.com/cb",
            "/relative",
            " https://app.example.com/cb",
            "https://APP.example.com/cb",
        ] {
            assert!(RedirectUri::parse(bad).is_err(), "{bad}");
        }
        let reg = vec!["https://app.example.com/cb".to_owned(), "http://localhost:3000/cb".to_owned()];
        let u = |s: &str| RedirectUri::parse(s).unwrap();
        assert!(u("https://app.example.com/cb").is_registered(&reg, false));
        assert!(!u("https://app.example.com/cb/").is_registered(&reg, false));
        assert!(!u("https://app.example.com/cb?x=1").is_registered(&reg, false));
        assert!(!u("http://localhost:4000/cb").is_registered(&reg, false));
        assert!(u("http://localhost:4000/cb").is_registered(&reg, true));
        assert!(!u("http://localhost:4000/other").is_registered(&reg, true));
    }

    #[test]
    fn origins_and_domains_are_normalised_or_refused() {
        assert_eq!(WebOrigin::parse("https://app.example.com").unwrap().as_str(), "https://app.example.com");
        assert!(WebOrigin::parse("http://localhost:5173").is_ok());
        for bad in ["https://app.example.com/", "https://app.example.com/x", "http://app.example.com", "*", "null"] {
            assert!(WebOrigin::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(DomainName::parse("Login.Example.com.").unwrap().as_str(), "login.example.com");
        for bad in ["localhost", "a..b", "-a.com", "1.2.3.4", "a_b.com", "host.com:443"] {
            assert!(DomainName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn email_normalises_and_validates() {
        assert_eq!(Email::parse("  Alice@Example.COM ").unwrap().as_str(), "alice@example.com");
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "a b@example.com",
            "a@b@example.com",
            "alice@-example.com",
            "alice@example..com",
            "<a@example.com>",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(65))).is_err());
        assert!(Email::parse("j.o'neil+tag@sub.example.co.uk").is_ok());
    }

    #[test]
    fn email_spellings_of_one_address_are_one() {
        // "josé" precomposed (U+00E9) and decomposed (e + U+0301).
        let nfc = Email::parse("jos\u{e9}@example.com").unwrap();
        let nfd = Email::parse("jose\u{301}@example.com").unwrap();
        assert_eq!(nfc, nfd);
        assert_eq!(nfc.as_str(), "jos\u{e9}@example.com");
        // An internationalised domain is kept in its ASCII form, whichever way it is written.
        let unicode = Email::parse("a@B\u{fc}cher.example").unwrap();
        let ascii = Email::parse("a@xn--bcher-kva.example").unwrap();
        assert_eq!(unicode, ascii);
        assert_eq!(unicode.domain(), "xn--bcher-kva.example");
        // Look-alikes are not folded: Cyrillic "а" (U+0430) is another mailbox than Latin "a".
        assert_ne!(Email::parse("\u{430}lice@example.com").unwrap(), Email::parse("alice@example.com").unwrap());
    }

    #[test]
    fn slug_rules() {
        assert!(Slug::parse("acme").is_ok());
        assert!(Slug::parse("acme-2").is_ok());
        for bad in ["", "-acme", "acme-", "Acme", "ac me", "a_b", &"a".repeat(64)] {
            assert!(Slug::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn plan_and_name() {
        assert_eq!(Plan::parse("enterprise").unwrap(), Plan::Enterprise);
        assert!(Plan::parse("gold").is_err());
        assert_eq!(DisplayName::parse("  Acme  ").unwrap().as_str(), "Acme");
        assert!(DisplayName::parse("   ").is_err());
    }
}

/// What was not found: names the thing in the message and picks the machine-readable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entity {
    Action,
    ApiKey,
    Client,
    Connection,
    Consent,
    DedicatedDatabase,
    DedicatedHost,
    Directory,
    Domain,
    Event,
    Factor,
    Invitation,
    Membership,
    Move,
    OldCopy,
    Organization,
    Origin,
    Permission,
    PlatformProject,
    Project,
    RedirectUri,
    Request,
    Resource,
    Role,
    Session,
    Tenant,
    UnfinishedMove,
    User,
    WebhookEndpoint,
}

impl Entity {
    /// The noun in "... not found".
    pub fn noun(self) -> &'static str {
        match self {
            Entity::Action => "action",
            Entity::ApiKey => "api key",
            Entity::Client => "client",
            Entity::Connection => "connection",
            Entity::Consent => "consent",
            Entity::DedicatedDatabase => "dedicated database",
            Entity::DedicatedHost => "dedicated host",
            Entity::Directory => "directory",
            Entity::Domain => "domain",
            Entity::Event => "event",
            Entity::Factor => "factor",
            Entity::Invitation => "invitation",
            Entity::Membership => "membership",
            Entity::Move => "move",
            Entity::OldCopy => "old copy",
            Entity::Organization => "organization",
            Entity::Permission => "permission",
            Entity::Role => "role",
            Entity::Origin => "origin",
            Entity::PlatformProject => "platform project",
            Entity::Project => "project",
            Entity::RedirectUri => "redirect URI",
            Entity::Request => "request",
            Entity::Resource => "resource",
            Entity::Session => "session",
            Entity::Tenant => "tenant",
            Entity::UnfinishedMove => "unfinished move",
            Entity::User => "user",
            Entity::WebhookEndpoint => "webhook endpoint",
        }
    }

    /// The API's error code for it (stable: clients match on these).
    pub fn code(self) -> &'static str {
        match self {
            Entity::Project => "project_not_found",
            Entity::User => "user_not_found",
            Entity::Tenant => "tenant_not_found",
            Entity::ApiKey => "api_key_not_found",
            Entity::Client => "client_not_found",
            Entity::Session => "session_not_found",
            Entity::Directory => "directory_not_found",
            Entity::Connection => "connection_not_found",
            Entity::Domain => "domain_not_found",
            Entity::RedirectUri => "redirect_uri_not_found",
            Entity::Origin => "origin_not_found",
            Entity::Organization => "organization_not_found",
            Entity::Membership => "membership_not_found",
            Entity::Invitation => "invitation_not_found",
            Entity::WebhookEndpoint => "webhook_endpoint_not_found",
            Entity::Event => "event_not_found",
            Entity::Consent => "consent_not_found",
            Entity::Resource => "resource_not_found",
            Entity::Factor => "factor_not_found",
            Entity::Role => "role_not_found",
            Entity::Permission => "permission_not_found",
            _ => "not_found",
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noun())
    }
}

/// Who acted, as the audit log records it (built from an authorization principal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: Option<String>,
    pub name: Option<String>,
}

impl Actor {
    pub fn user(id: uuid::Uuid, email: Option<&str>) -> Self {
        Actor { kind: ActorKind::User, id: Some(id.to_string()), name: email.map(str::to_owned) }
    }

    pub fn anonymous() -> Self {
        Actor { kind: ActorKind::Anonymous, id: None, name: None }
    }

    pub fn api_key(key_id: &str) -> Self {
        Actor { kind: ActorKind::ApiKey, id: Some(key_id.to_owned()), name: None }
    }
}

/// Who acted, by kind; written to `actor_type` as these strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActorKind {
    User,
    M2mClient,
    ApiKey,
    Operator,
    System,
    Anonymous,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::M2mClient => "m2m_client",
            ActorKind::ApiKey => "api_key",
            ActorKind::Operator => "operator",
            ActorKind::System => "system",
            ActorKind::Anonymous => "anonymous",
        }
    }
}

impl std::fmt::Display for ActorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
