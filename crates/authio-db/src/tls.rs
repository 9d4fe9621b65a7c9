//! TLS to PostgreSQL: the libpq parameters `sslmode` and `sslrootcert` of a database URL, read
//! in this one place, and the rustls configuration they mean.
//!
//! tokio-postgres's own parser knows `sslmode=disable|prefer|require` only, so both parameters
//! are taken out of the URL here and the rest is handed to it. Every connection Authio opens
//! (both pools, direct connections, the listener, the pipelined read client) starts from
//! [`parse_url`], so the rules below hold everywhere:
//!
//! | `sslmode`     | encrypted                  | certificate checked                         |
//! |---------------|----------------------------|---------------------------------------------|
//! | `disable`     | no                         | -                                           |
//! | `prefer`      | if the server accepts TLS  | chain, when `sslrootcert` is given          |
//! | `require`     | yes                        | chain, when `sslrootcert` is given (libpq)  |
//! | `verify-ca`   | yes                        | chain against `sslrootcert`                 |
//! | `verify-full` | yes                        | chain against `sslrootcert`, and host name  |
//!
//! Without `sslmode`, a loopback host (127.0.0.0/8, ::1, `localhost`, a Unix socket) connects
//! without TLS, and any other host is refused: it needs an explicit `sslmode`. There is no
//! default root store (libpq's is `~/.postgresql/root.crt`): `verify-ca` and `verify-full`
//! need `sslrootcert=/path/to/ca.pem`, or `sslrootcert=system` (Mozilla's roots, with
//! `verify-full` only, as libpq 16 has it).
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, WebPkiServerVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::{ChannelBinding, Host, SslNegotiation};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::DbError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// TLS when the server offers it, plaintext otherwise.
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, DbError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(config(
                    "sslmode=allow is not supported (it tries plaintext first): use sslmode=disable, prefer, \
                     require, verify-ca or verify-full",
                ))
            }
            other => {
                return Err(config(format!(
                    "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the certificates that a server's chain must lead to come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the Mozilla roots of `webpki-roots`.
    System,
}

/// What is checked of the server's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Nothing: encryption against passive listeners only.
    None,
    /// The chain leads to a root of `sslrootcert`; any host name.
    Chain,
    /// The chain, and the certificate names the host connected to.
    ChainAndHost,
}

/// The TLS parameters of one database URL, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// After defaults: `disable` for a loopback URL that named no mode.
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
}

impl TlsSettings {
    pub fn verification(&self) -> Verification {
        match (self.mode, &self.root_cert) {
            (SslMode::Disable, _) => Verification::None,
            (SslMode::VerifyFull, _) => Verification::ChainAndHost,
            (SslMode::VerifyCa, _) => Verification::Chain,
            // As libpq: a root certificate makes require (and prefer, once encrypted) check
            // the chain.
            (SslMode::Prefer | SslMode::Require, Some(_)) => Verification::Chain,
            (SslMode::Prefer | SslMode::Require, None) => Verification::None,
        }
    }

    fn client_config(&self) -> Result<ClientConfig, DbError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| config(format!("TLS set-up: {e}")))?;
        let roots = match (&self.root_cert, self.mode) {
            (Some(root), m) if m != SslMode::Disable => Some(Arc::new(load_roots(root)?)),
            _ => None,
        };
        let check = match (self.verification(), roots) {
            (Verification::ChainAndHost, Some(roots)) => {
                let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| config(format!("TLS set-up: {e}")))?;
                return Ok(builder.with_webpki_verifier(verifier).with_no_client_auth());
            }
            (Verification::Chain, Some(roots)) => Check::Chain(roots),
            (Verification::None, _) if self.mode == SslMode::Disable => Check::Refuse,
            (Verification::None, _) => Check::Nothing,
            // parse_url refuses verify-* without roots; never trust silently.
            (_, None) => Check::Refuse,
        };
        let verifier = PgVerifier { check, provider: provider.clone() };
        Ok(builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth())
    }
}

fn config(msg: impl Into<String>) -> DbError {
    DbError::Config(msg.into())
}

/// aws-lc-rs, named explicitly: with both rustls providers compiled in (ring comes with other
/// crates), rustls cannot pick a process default by itself.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())).clone()
}

fn load_roots(root: &RootCert) -> Result<RootCertStore, DbError> {
    let path = match root {
        RootCert::System => return Ok(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }),
        RootCert::File(path) => path,
    };
    let bad = |e: &dyn std::fmt::Display| config(format!("sslrootcert={}: {e}", path.display()));
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        store.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if store.is_empty() {
        return Err(bad(&"the file holds no PEM certificate"));
    }
    Ok(store)
}

#[derive(Debug)]
enum Check {
    /// For `sslmode=disable`, where TLS is never started: fail closed should it ever be.
    Refuse,
    Nothing,
    Chain(Arc<RootCertStore>),
}

/// The verifier of `require`/`prefer` (no check, or the chain with `sslrootcert`) and
/// `verify-ca` (the chain, any host name). Handshake signatures are always verified, so the
/// peer holds the key of the certificate it sent.
#[derive(Debug)]
struct PgVerifier {
    check: Check,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PgVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.check {
            Check::Refuse => Err(rustls::Error::General("TLS is disabled for this connection".into())),
            Check::Nothing => Ok(ServerCertVerified::assertion()),
            Check::Chain(roots) => {
                let cert = ParsedCertificate::try_from(end_entity)?;
                verify_server_cert_signed_by_trust_anchor(
                    &cert,
                    roots,
                    intermediates,
                    now,
                    self.provider.signature_verification_algorithms.all,
                )?;
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A database URL parsed once: the tokio-postgres configuration (its `ssl_mode` set from
/// [`TlsSettings`]) and the TLS client configuration for it.
#[derive(Clone)]
pub struct ConnectConfig {
    pub pg: tokio_postgres::Config,
    pub tls: TlsSettings,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for ConnectConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio_postgres::Config's Debug redacts the password.
        f.debug_struct("ConnectConfig").field("pg", &self.pg).field("tls", &self.tls).finish()
    }
}

impl ConnectConfig {
    /// The connector for tokio-postgres (deadpool pools and direct connections). With
    /// `sslmode=disable` tokio-postgres never starts TLS with it.
    pub fn make_tls(&self) -> MakeRustlsConnect {
        MakeRustlsConnect::new((*self.client).clone())
    }

    /// The connector for the pipelined read client; `None` with `sslmode=disable`.
    pub(crate) fn tls_connector(&self) -> Option<tokio_rustls::TlsConnector> {
        (self.tls.mode != SslMode::Disable).then(|| tokio_rustls::TlsConnector::from(self.client.clone()))
    }
}

/// Parse a `postgres://` or `postgresql://` URL: take out and check `sslmode` and
/// `sslrootcert`, apply the non-loopback rule, load the root certificates, and hand the rest
/// to tokio-postgres. Errors never quote the URL (it may hold a password).
pub fn parse_url(url: &str) -> Result<ConnectConfig, DbError> {
    let (mode, root_cert, rest) = split_url(url)?;
    let mut pg: tokio_postgres::Config =
        rest.parse().map_err(|e| config(format!("invalid database URL: {}", crate::error::describe(&e))))?;
    let mode = match (mode, &root_cert) {
        (Some(m), _) => m,
        // As libpq 16: the public roots imply the strongest mode.
        (None, Some(RootCert::System)) => SslMode::VerifyFull,
        (None, Some(RootCert::File(_))) => {
            return Err(config(
                "the database URL has sslrootcert but no sslmode: add sslmode=verify-full (or verify-ca)",
            ))
        }
        (None, None) => match non_loopback_host(&pg) {
            Some(host) => {
                return Err(config(format!(
                    "the database host {host} is not a loopback address and its URL sets no sslmode: add \
                     sslmode=require (or stronger: sslmode=verify-full with sslrootcert=/path/to/ca.pem), or \
                     sslmode=disable to connect without TLS on purpose"
                )))
            }
            None => SslMode::Disable,
        },
    };
    match (mode, &root_cert) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(config(format!(
                "sslmode={} needs sslrootcert=/path/to/ca.pem (the CA that signed the server's certificate), or \
                 sslrootcert=system with verify-full for a certificate from a public CA; there is no default root store",
                mode.as_str()
            )))
        }
        (m, Some(RootCert::System)) if m != SslMode::VerifyFull => {
            return Err(config(format!(
                "sslrootcert=system needs sslmode=verify-full (sslmode={} would accept any public certificate)",
                m.as_str()
            )))
        }
        _ => {}
    }
    if mode != SslMode::Disable {
        if pg.get_channel_binding() == ChannelBinding::Require {
            return Err(config("channel_binding=require is not supported: the pipelined read client does not bind"));
        }
        if pg.get_ssl_negotiation() == SslNegotiation::Direct {
            return Err(config("sslnegotiation=direct is not supported: leave sslnegotiation unset"));
        }
    }
    pg.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    });
    // With TLS off the root certificate is never used, so it is not read either (as libpq).
    let tls = TlsSettings { mode, root_cert: if mode == SslMode::Disable { None } else { root_cert } };
    let client = Arc::new(tls.client_config()?);
    Ok(ConnectConfig { pg, tls, client })
}

/// Split a URL into its `sslmode`, its `sslrootcert` and the URL without them.
fn split_url(url: &str) -> Result<(Option<SslMode>, Option<RootCert>, String), DbError> {
    let url = url.trim();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(config("a database URL must start with postgres:// or postgresql://"));
    }
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let (mut mode, mut root) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(raw_key)?.as_str() {
            "sslmode" => {
                if mode.replace(SslMode::parse(&percent_decode(raw_value)?)?).is_some() {
                    return Err(config("sslmode appears twice in the database URL"));
                }
            }
            "sslrootcert" => {
                let value = percent_decode(raw_value)?;
                let r = match value.as_str() {
                    "" => return Err(config("sslrootcert is empty")),
                    "system" => RootCert::System,
                    path => RootCert::File(PathBuf::from(path)),
                };
                if root.replace(r).is_some() {
                    return Err(config("sslrootcert appears twice in the database URL"));
                }
            }
            key @ ("sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir") => {
                return Err(config(format!("{key} is not supported (no client certificates or CRLs)")))
            }
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok((mode, root, rest))
}

fn percent_decode(s: &str) -> Result<String, DbError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| config("a bad %-escape in the database URL's parameters"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| config("the database URL's parameters are not UTF-8"))
}

/// The first host a connection could reach over the network (not loopback), if any.
fn non_loopback_host(pg: &tokio_postgres::Config) -> Option<String> {
    let hosts = pg.get_hosts().iter().filter_map(|h| match h {
        Host::Tcp(name) => (!is_loopback_name(name)).then(|| name.clone()),
        // A Unix socket.
        _ => None,
    });
    let addrs = pg.get_hostaddrs().iter().filter(|a| !a.to_canonical().is_loopback()).map(|a| a.to_string());
    hosts.chain(addrs).next()
}

fn is_loopback_name(host: &str) -> bool {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    // A Unix socket directory.
    bare.starts_with('/')
        || bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        match parse_url(url) {
            Ok(c) => panic!("{url} was accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// A scratch directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Self {
            let p = std::env::temp_dir().join(format!("authio-tls-unit-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A PEM file holding a fresh self-signed CA certificate.
    fn ca_file() -> (Dir, PathBuf) {
        let dir = Dir::new();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let path = dir.0.join("ca.pem");
        std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
        (dir, path)
    }

    #[test]
    fn loopback_urls_without_sslmode_connect_in_plaintext() {
        for url in [
            "postgres://authio_app@127.0.0.1:5432/authio",
            "postgres://u@127.8.9.10/db",
            "postgresql://u@localhost/db",
            "postgres://u@LocalHost:5433/db",
            "postgres://u@[::1]:5432/db",
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/db",
            "postgres://u@/db?host=/var/run/postgresql",
        ] {
            let c = parse_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(c.tls, TlsSettings { mode: SslMode::Disable, root_cert: None }, "{url}");
            assert_eq!(c.pg.get_ssl_mode(), tokio_postgres::config::SslMode::Disable, "{url}");
            assert_eq!(c.tls.verification(), Verification::None);
            assert!(c.tls_connector().is_none());
        }
    }

    #[test]
    fn a_remote_host_without_sslmode_is_refused_with_what_to_add() {
        let e = err("postgres://authio_app:pw@db.example.com:5432/authio");
        assert!(e.contains("db.example.com is not a loopback address"), "{e}");
        assert!(e.contains("add sslmode=require (or stronger"), "{e}");
        assert!(e.contains("sslmode=disable to connect without TLS on purpose"), "{e}");
        assert!(!e.contains("pw"), "the password must not be quoted: {e}");
        // Any one remote host of several, or a remote hostaddr behind a local name.
        assert!(err("postgres://u@localhost,10.0.0.7/db").contains("10.0.0.7"));
        assert!(err("postgres://u@localhost/db?hostaddr=192.0.2.1").contains("192.0.2.1"));
        assert!(err("postgres://u@127.0.0.1.example.com/db").contains("not a loopback"));
        // Explicit modes are accepted.
        let d = parse_url("postgres://u:pw@db.example.com/authio?sslmode=disable").unwrap();
        assert_eq!(d.tls.mode, SslMode::Disable);
        assert_eq!(d.pg.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
        let r = parse_url("postgres://u@db.example.com/authio?sslmode=require").unwrap();
        assert_eq!(r.tls.verification(), Verification::None);
        assert_eq!(r.pg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        let p = parse_url("postgres://u@db.example.com/authio?sslmode=prefer").unwrap();
        assert_eq!(p.pg.get_ssl_mode(), tokio_postgres::config::SslMode::Prefer);
        assert!(p.tls_connector().is_some());
    }

    #[test]
    fn modes_and_root_certificates_follow_libpq() {
        let (_dir, ca) = ca_file();
        let ca = ca.display().to_string();
        let with = |q: &str| parse_url(&format!("postgres://u:pw@db.example.com:5432/authio?{q}"));

        let full = with(&format!("sslmode=verify-full&sslrootcert={ca}&application_name=x")).unwrap();
        assert_eq!(full.tls.mode, SslMode::VerifyFull);
        assert_eq!(full.tls.root_cert, Some(RootCert::File(ca.clone().into())));
        assert_eq!(full.tls.verification(), Verification::ChainAndHost);
        assert_eq!(full.pg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(full.pg.get_application_name(), Some("x"));
        assert_eq!(full.pg.get_password(), Some(&b"pw"[..]));

        let ca_only = with(&format!("sslrootcert={ca}&sslmode=verify-ca")).unwrap();
        assert_eq!(ca_only.tls.verification(), Verification::Chain);
        // require with a root certificate checks the chain, as libpq does.
        let req = with(&format!("sslmode=require&sslrootcert={ca}")).unwrap();
        assert_eq!(req.tls.verification(), Verification::Chain);
        // A percent-encoded path is decoded.
        let encoded = ca.replace('/', "%2F");
        assert_eq!(
            with(&format!("sslmode=verify-ca&sslrootcert={encoded}")).unwrap().tls.root_cert,
            ca_only.tls.root_cert
        );
        // disable ignores (and does not read) the root certificate.
        let off = with("sslmode=disable&sslrootcert=/nonexistent/ca.pem").unwrap();
        assert_eq!(off.tls, TlsSettings { mode: SslMode::Disable, root_cert: None });

        // System roots: verify-full only, and implied when sslmode is absent.
        let sys = with("sslrootcert=system").unwrap();
        assert_eq!(sys.tls, TlsSettings { mode: SslMode::VerifyFull, root_cert: Some(RootCert::System) });
        assert!(with("sslrootcert=system&sslmode=verify-ca").is_err());
        assert!(with("sslrootcert=system&sslmode=require").is_err());
    }

    #[test]
    fn bad_tls_parameters_are_configuration_errors() {
        let (_dir, ca) = ca_file();
        let ca = ca.display().to_string();
        let e = |q: &str| err(&format!("postgres://u@127.0.0.1/db?{q}"));
        assert!(e("sslmode=verify-full").contains("needs sslrootcert=/path/to/ca.pem"));
        assert!(e("sslmode=verify-ca").contains("no default root store"));
        assert!(e("sslmode=strict").contains("is not one of disable, prefer, require, verify-ca, verify-full"));
        assert!(e("sslmode=allow").contains("not supported"));
        assert!(e("sslmode=require&sslmode=disable").contains("twice"));
        assert!(e(&format!("sslrootcert={ca}")).contains("sslrootcert but no sslmode"));
        assert!(e("sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").contains("sslrootcert=/nonexistent/ca.pem"));
        assert!(e("sslmode=verify-full&sslrootcert=").contains("empty"));
        assert!(e("sslmode=require&sslcert=/c.pem").contains("sslcert is not supported"));
        assert!(e("sslmode=require&channel_binding=require").contains("channel_binding=require"));
        assert!(e("sslmode=requ%ZZ").contains("%-escape"));
        // Other parameters still go to tokio-postgres, which checks them.
        assert!(e("sslmode=require&nonsense=1").contains("invalid database URL"));
        assert!(err("host=127.0.0.1 user=postgres").contains("must start with postgres://"));

        let dir = Dir::new();
        let empty = dir.0.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(e(&format!("sslmode=verify-ca&sslrootcert={}", empty.display())).contains("no PEM certificate"));
    }

    #[test]
    fn the_rest_of_the_url_reaches_tokio_postgres_unchanged() {
        let (mode, root, rest) =
            split_url("postgres://u:p%40ss@h:5/d?application_name=a%20b&sslmode=require&connect_timeout=3").unwrap();
        assert_eq!(mode, Some(SslMode::Require));
        assert_eq!(root, None);
        assert_eq!(rest, "postgres://u:p%40ss@h:5/d?application_name=a%20b&connect_timeout=3");
        let (_, _, bare) = split_url("postgres://u@h/d?sslmode=disable").unwrap();
        assert_eq!(bare, "postgres://u@h/d");
    }
}
