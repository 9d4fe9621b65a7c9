//! Email: messages rendered from per-project templates, written sealed to the outbox in the
//! transaction that makes what they announce (a crash loses no email, a request never waits on
//! SMTP), and delivered by a sender loop over SMTP with retries and backoff.
use std::time::Duration as StdDuration;

use authio_db::{preresolve, MasterKey, Router, RowExt, Scope, ScopedTx, Type};
use chrono::{DateTime, Duration, Utc};
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::CoreError;

/// What an email is for; each has a built-in template a project may replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailKind {
    MagicLink,
    EmailCode,
    PasswordReset,
    EmailVerification,
    Invitation,
}

impl MailKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MailKind::MagicLink => "magic_link",
            MailKind::EmailCode => "email_code",
            MailKind::PasswordReset => "password_reset",
            MailKind::EmailVerification => "email_verification",
            MailKind::Invitation => "invitation",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            MailKind::MagicLink,
            MailKind::EmailCode,
            MailKind::PasswordReset,
            MailKind::EmailVerification,
            MailKind::Invitation,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    fn builtin(self) -> Template {
        let (subject, text, html) = match self {
            MailKind::MagicLink => (
                "Your sign-in link for {{project}}",
                "Sign in to {{project}} with this link (valid for {{minutes}} minutes, once):\n\n{{link}}\n\nIf you did not ask for it, ignore this email.\n",
                "<p>Sign in to <strong>{{project}}</strong>:</p><p><a href=\"{{link}}\">Sign in</a></p><p>The link works once, for {{minutes}} minutes. If you did not ask for it, ignore this email.</p>",
            ),
            MailKind::EmailCode => (
                "{{code}} is your {{project}} code",
                "Your {{project}} sign-in code is {{code}}\n\nIt expires in {{minutes}} minutes. If you did not ask for it, ignore this email.\n",
                "<p>Your <strong>{{project}}</strong> sign-in code:</p><p style=\"font-size:24px;letter-spacing:4px\"><strong>{{code}}</strong></p><p>It expires in {{minutes}} minutes.</p>",
            ),
            MailKind::PasswordReset => (
                "Reset your {{project}} password",
                "Choose a new password for {{project}} with this link (valid for {{minutes}} minutes, once):\n\n{{link}}\n\nIf you did not ask for it, ignore this email.\n",
                "<p>Choose a new password for <strong>{{project}}</strong>:</p><p><a href=\"{{link}}\">Reset password</a></p><p>The link works once, for {{minutes}} minutes.</p>",
            ),
            MailKind::EmailVerification => (
                "Confirm your email for {{project}}",
                "Confirm your email address for {{project}}:\n\n{{link}}\n",
                "<p>Confirm your email address for <strong>{{project}}</strong>:</p><p><a href=\"{{link}}\">Confirm</a></p>",
            ),
            MailKind::Invitation => (
                "You are invited to join {{organization}} on {{project}}",
                "You are invited to join {{organization}} on {{project}}. Accept the invitation with this link (it works once, for {{days}} days):\n\n{{link}}\n\nIf you did not expect it, ignore this email.\n",
                "<p>You are invited to join <strong>{{organization}}</strong> on <strong>{{project}}</strong>.</p><p><a href=\"{{link}}\">Accept the invitation</a></p><p>The link works once, for {{days}} days. If you did not expect it, ignore this email.</p>",
            ),
        };
        Template { subject: subject.into(), text: text.into(), html: Some(html.into()) }
    }
}

/// A template: `{{project}}`, `{{link}}`, `{{code}}`, `{{minutes}}`, `{{days}}` and (for
/// invitations) `{{organization}}` are replaced (escaped in the HTML part).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

/// The values a template may use.
pub struct Values<'a> {
    pub project: &'a str,
    pub link: Option<&'a str>,
    pub code: Option<&'a str>,
    pub minutes: i64,
    /// The organization an invitation is to.
    pub organization: Option<&'a str>,
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn fill(template: &str, v: &Values<'_>, escape: bool) -> String {
    let minutes = v.minutes.to_string();
    let days = (v.minutes / 1440).to_string();
    let pairs = [
        ("{{project}}", v.project),
        ("{{link}}", v.link.unwrap_or("")),
        ("{{code}}", v.code.unwrap_or("")),
        ("{{minutes}}", minutes.as_str()),
        ("{{days}}", days.as_str()),
        ("{{organization}}", v.organization.unwrap_or("")),
    ];
    let mut out = template.to_owned();
    for (k, val) in pairs {
        let val = if escape { escape_html(val) } else { val.to_owned() };
        out = out.replace(k, &val);
    }
    out
}

impl Template {
    /// Subject lines are one line: newlines in a value are dropped.
    fn render(&self, v: &Values<'_>) -> (String, String, Option<String>) {
        let subject = fill(&self.subject, v, false).replace(['\r', '\n'], " ");
        (subject, fill(&self.text, v, false), self.html.as_deref().map(|h| fill(h, v, true)))
    }

    /// A project's template must say what the email is for: links and codes must appear.
    pub fn validate(&self, kind: MailKind) -> Result<(), CoreError> {
        let needs = if kind == MailKind::EmailCode { "{{code}}" } else { "{{link}}" };
        let bad = |m: &'static str| CoreError::Invalid(crate::types::ValidationError::Field(m));
        if self.subject.trim().is_empty() || self.subject.len() > 200 || self.subject.contains(['\r', '\n']) {
            return Err(bad("template subject (1-200 characters, one line)"));
        }
        if !self.text.contains(needs) || self.text.len() > 20_000 {
            return Err(bad("template text (must contain the link or code placeholder, at most 20000 characters)"));
        }
        if let Some(h) = &self.html {
            if !h.contains(needs) || h.len() > 100_000 {
                return Err(bad("template html (must contain the link or code placeholder)"));
            }
        }
        Ok(())
    }
}

/// A message as the outbox holds it (sealed with the master key).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub to: String,
    pub from_name: String,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

/// The project's template for `kind` (scoped read on the shared database), or the built-in one.
pub async fn template_for(tx: &ScopedTx, kind: MailKind) -> Result<Template, CoreError> {
    let row = tx
        .query_opt(
            "SELECT subject, text_body, html_body FROM email_templates WHERE kind = $1",
            &[(&kind.as_str(), Type::TEXT)],
        )
        .await?;
    Ok(match row {
        Some(r) => Template { subject: r.col("subject")?, text: r.col("text_body")?, html: r.col("html_body")? },
        None => kind.builtin(),
    })
}

#[allow(clippy::too_many_arguments)]
/// Render and write a message to the outbox inside `tx` (a pinned transaction of the scope):
/// it is sent once that transaction commits, and never if it rolls back.
pub async fn enqueue(
    tx: &ScopedTx,
    scope: &Scope,
    key: &MasterKey,
    kind: MailKind,
    to: &str,
    from_name: &str,
    values: &Values<'_>,
    now: DateTime<Utc>,
) -> Result<(), CoreError> {
    let project = crate::types::project_of(scope)?;
    let (subject, text, html) = template_for(tx, kind).await?.render(values);
    let message = Message { to: to.to_owned(), from_name: from_name.to_owned(), subject, text, html };
    let json = serde_json::to_string(&message).map_err(|e| CoreError::Internal(e.to_string()))?;
    let sealed = key.encrypt(&json).map_err(|e| CoreError::Internal(e.to_string()))?;
    let to_hash = Sha256::digest(to.as_bytes()).to_vec();
    tx.query(
        "INSERT INTO email_outbox (tenant_id, project_id, id, to_hash, message_enc, next_attempt_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
        &[
            (&scope.tenant_id, Type::UUID),
            (&project, Type::UUID),
            (&Uuid::now_v7(), Type::UUID),
            (&to_hash, Type::BYTEA),
            (&sealed, Type::TEXT),
            (&now, Type::TIMESTAMPTZ),
        ],
    )
    .await?;
    Ok(())
}

/// How mail leaves.
#[derive(Clone, Debug)]
pub struct MailSettings {
    /// `smtp://host:port` (plain, for local relays), `smtp://host:587?tls=required` (STARTTLS),
    /// `smtps://host:465` (TLS); credentials as `smtp://user:pass@host`.
    pub smtp_url: String,
    /// The envelope and `From` address; the display name is the project's sender name.
    pub from_address: String,
    /// Attempts before a message is given up (its sealed body is then dropped).
    pub max_attempts: i32,
    /// The first retry waits this long, doubling up to an hour.
    pub first_backoff: StdDuration,
    /// How often the sender looks for due mail.
    pub poll_every: StdDuration,
}

impl MailSettings {
    pub fn new(smtp_url: impl Into<String>, from_address: impl Into<String>) -> Self {
        MailSettings {
            smtp_url: smtp_url.into(),
            from_address: from_address.into(),
            max_attempts: 8,
            first_backoff: StdDuration::from_secs(10),
            poll_every: StdDuration::from_millis(250),
        }
    }
}

/// Delivers the outbox over SMTP.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from_address: lettre::Address,
    settings: MailSettings,
    router: Router,
    key: MasterKey,
}

/// How long a taken message stays with its sender before another may take it.
const LEASE_SECS: i32 = 120;

impl Mailer {
    pub fn new(router: Router, key: MasterKey, settings: MailSettings) -> Result<Self, CoreError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&settings.smtp_url)
            .map_err(|e| CoreError::Config(format!("smtp_url: {e}")))?
            .timeout(Some(StdDuration::from_secs(20)))
            .build();
        let from_address = settings
            .from_address
            .parse::<lettre::Address>()
            .map_err(|e| CoreError::Config(format!("mail from address: {e}")))?;
        Ok(Mailer { transport, from_address, settings, router, key })
    }

    fn build(&self, m: &Message) -> Result<lettre::Message, String> {
        let from = Mailbox::new(Some(m.from_name.clone()), self.from_address.clone());
        let to: Mailbox = m.to.parse().map_err(|e| format!("recipient: {e}"))?;
        let builder = lettre::Message::builder().from(from).to(to).subject(m.subject.clone());
        let text = SinglePart::builder().header(ContentType::TEXT_PLAIN).body(m.text.clone());
        let built = match &m.html {
            Some(h) => builder.multipart(
                MultiPart::alternative()
                    .singlepart(text)
                    .singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(h.clone())),
            ),
            None => builder.singlepart(text),
        };
        built.map_err(|e| e.to_string())
    }

    fn backoff(&self, attempts: i32) -> Duration {
        let secs = self.settings.first_backoff.as_secs_f64() * 2f64.powi(attempts.clamp(0, 20));
        Duration::milliseconds((secs.min(3600.0) * 1000.0) as i64)
    }

    /// Send what is due; returns how many were sent. Failures are retried later with backoff.
    pub async fn deliver_due(&self, now: DateTime<Utc>) -> Result<usize, CoreError> {
        let rows = preresolve::mail_take(&self.router, 20, now, LEASE_SECS).await?;
        let mut sent = 0;
        for r in &rows {
            let id: Uuid = r.try_get(0)?;
            let sealed: String = r.try_get(1)?;
            let attempts: i32 = r.try_get(2)?;
            let outcome = match self
                .key
                .decrypt(&sealed)
                .map_err(|e| e.to_string())
                .and_then(|j| serde_json::from_str::<Message>(&j).map_err(|e| e.to_string()))
            {
                Ok(m) => match self.build(&m) {
                    Ok(email) => self.transport.send(email).await.map(|_| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {
                    preresolve::mail_sent(&self.router, id).await?;
                    sent += 1;
                }
                Err(e) => {
                    let give_up = attempts + 1 >= self.settings.max_attempts;
                    let next = now + self.backoff(attempts);
                    tracing::warn!(mail = %id, attempts = attempts + 1, give_up, error = %e, "mail not sent");
                    preresolve::mail_failed(&self.router, id, &e, next, give_up, now).await?;
                }
            }
        }
        Ok(sent)
    }

    /// Deliver mail until the task is aborted (any number of nodes may run one).
    pub fn spawn(self, clock: std::sync::Arc<dyn crate::Clock>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.settings.poll_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                loop {
                    match self.deliver_due(clock.now()).await {
                        Ok(n) if n > 0 => continue,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "mail sender failed");
                            break;
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_values_and_escape_them_in_html_only() {
        let t = Template {
            subject: "Hi {{project}}\n".into(),
            text: "go {{link}} in {{minutes}}".into(),
            html: Some("<a href=\"{{link}}\">{{project}}</a>".into()),
        };
        let v = Values {
            project: "A&B <x>",
            link: Some("https://a.test/?t=1&u=2"),
            code: None,
            minutes: 15,
            organization: None,
        };
        let (s, text, html) = t.render(&v);
        assert_eq!(s, "Hi A&B <x> ");
        assert_eq!(text, "go https://a.test/?t=1&u=2 in 15");
        assert_eq!(html.as_deref(), Some("<a href=\"https://a.test/?t=1&amp;u=2\">A&amp;B &lt;x&gt;</a>"));
    }

    #[test]
    fn custom_templates_must_carry_the_link_or_code() {
        let t = Template { subject: "s".into(), text: "no link here".into(), html: None };
        assert!(t.validate(MailKind::MagicLink).is_err());
        let t = Template { subject: "s".into(), text: "code {{code}}".into(), html: None };
        assert!(t.validate(MailKind::EmailCode).is_ok());
        assert!(t.validate(MailKind::PasswordReset).is_err());
        for k in [MailKind::MagicLink, MailKind::EmailCode, MailKind::PasswordReset, MailKind::EmailVerification] {
            assert!(k.builtin().validate(k).is_ok());
            assert_eq!(MailKind::parse(k.as_str()), Some(k));
        }
    }
}
