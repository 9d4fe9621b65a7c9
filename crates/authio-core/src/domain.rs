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
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let s = raw.trim().to_lowercase();
        if s.len() > 254 {
            return Err(ValidationError::Email("longer than 254 characters"));
        }
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
        let labels: Vec<&str> = domain.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        };
        if labels.len() < 2 || !labels.iter().all(label_ok) {
            return Err(ValidationError::Email("bad domain"));
        }
        Ok(Email(s))
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
pub(crate) fn project_of(scope: &authio_db::Scope) -> Result<uuid::Uuid, crate::CoreError> {
    scope.project_id.ok_or(crate::CoreError::NotFound("project"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
