//! A local SMTP receiver that keeps what it is sent in memory: `authio dev` delivers its mail
//! here (shown on `/dev/mailbox`) and tests read the links and codes from it. It speaks the
//! part of SMTP (RFC 5321) that a submitting client uses: EHLO/HELO, MAIL, RCPT, DATA, RSET,
//! NOOP, QUIT. Not for production: no TLS, no authentication, no relaying.
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// A message as received.
#[derive(Clone, Debug)]
pub struct CaughtMail {
    pub from: String,
    pub to: Vec<String>,
    /// The raw message (headers and body) as sent, dot-unstuffed.
    pub raw: String,
    pub received_at: chrono::DateTime<chrono::Utc>,
}

impl CaughtMail {
    /// A header's value (first occurrence, unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.raw.split("\r\n\r\n").next()?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = value.as_mut() {
                if line.starts_with([' ', '\t']) {
                    v.push_str(line.trim_start());
                    continue;
                }
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case(name) {
                    value = Some(v.trim().to_owned());
                }
            }
        }
        value
    }

    /// The decoded text of the message (quoted-printable soft breaks and escapes undone), for
    /// finding links and codes in it.
    pub fn text(&self) -> String {
        let body = self.raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        decode_quoted_printable(body)
    }
}

fn decode_quoted_printable(s: &str) -> String {
    let joined = s.replace("=\r\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The receiver and what it caught.
#[derive(Clone, Default)]
pub struct MailCatcher {
    inner: Arc<(Mutex<Vec<CaughtMail>>, Notify)>,
}

impl MailCatcher {
    /// Listen on `listener` until the task is aborted.
    pub fn serve(&self, listener: TcpListener) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let me = me.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.session(stream).await {
                        tracing::debug!(error = %e, "mail catcher session ended");
                    }
                });
            }
        })
    }

    async fn session(&self, stream: tokio::net::TcpStream) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read);
        write.write_all(b"220 authio mail catcher ESMTP\r\n").await?;
        let (mut from, mut to) = (String::new(), Vec::new());
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let cmd = line.trim_end().to_owned();
            let upper = cmd.to_ascii_uppercase();
            let reply: &[u8] = if upper.starts_with("EHLO") {
                b"250-authio\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
            } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
                b"250 OK\r\n"
            } else if upper.starts_with("MAIL FROM:") {
                from = address(&cmd[10..]);
                to.clear();
                b"250 OK\r\n"
            } else if upper.starts_with("RCPT TO:") {
                to.push(address(&cmd[8..]));
                b"250 OK\r\n"
            } else if upper == "RSET" {
                from.clear();
                to.clear();
                b"250 OK\r\n"
            } else if upper == "DATA" {
                if to.is_empty() {
                    write.write_all(b"503 RCPT first\r\n").await?;
                    continue;
                }
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut raw = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let unstuffed = line.strip_prefix('.').unwrap_or(&line);
                    raw.push_str(unstuffed.trim_end_matches(['\r', '\n']));
                    raw.push_str("\r\n");
                }
                let mail = CaughtMail { from: from.clone(), to: to.clone(), raw, received_at: chrono::Utc::now() };
                if let Ok(mut all) = self.inner.0.lock() {
                    all.push(mail);
                }
                self.inner.1.notify_waiters();
                b"250 OK queued\r\n"
            } else if upper == "QUIT" {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            } else {
                b"502 not implemented\r\n"
            };
            write.write_all(reply).await?;
        }
    }

    /// Everything caught so far, oldest first.
    pub fn all(&self) -> Vec<CaughtMail> {
        self.inner.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The messages to `address`, oldest first.
    pub fn to(&self, address: &str) -> Vec<CaughtMail> {
        self.all().into_iter().filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(address))).collect()
    }

    /// Wait (up to `timeout`) until `address` has received more than `seen` messages; returns
    /// the newest.
    pub async fn wait_for(&self, address: &str, seen: usize, timeout: std::time::Duration) -> Option<CaughtMail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.1.notified();
            let got = self.to(address);
            if got.len() > seen {
                return got.last().cloned();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

fn address(arg: &str) -> String {
    let a = arg.trim();
    let a = a.split_whitespace().next().unwrap_or("");
    a.trim_start_matches('<').trim_end_matches('>').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_printable_soft_breaks_and_escapes_are_undone() {
        assert_eq!(decode_quoted_printable("a=3Db=\r\nc"), "a=bc");
        assert_eq!(decode_quoted_printable("end="), "end=");
    }
}
