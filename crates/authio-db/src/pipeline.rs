//! A minimal PostgreSQL client for the hot read path: several extended-protocol statements
//! sent with a single Sync, which PostgreSQL runs as one implicit transaction.
//!
//! tokio-postgres ends every query with its own Sync, so binding the transaction-local GUCs
//! there needs an explicit BEGIN and COMMIT: two more statements per read. Here the bind and
//! the read travel together, `set_config(..., true)` is visible to the read and gone after
//! the Sync, and one read costs one round trip and two statements. Unnamed statements only,
//! so it works through pgbouncer in transaction-pooling mode.
//!
//! TLS follows the URL's `sslmode` and `sslrootcert` (see [`crate::tls`]), with the same
//! rustls configuration as the tokio-postgres pools. SCRAM-SHA-256 runs without channel
//! binding, so SCRAM-SHA-256-PLUS is never chosen.
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use postgres_protocol::IsNull;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::types::{FromSql, Type};

use crate::tls::{ConnectConfig, SslMode};
use crate::{DbError, Param};

/// A row of the last statement of a pipeline, decoded on access.
#[derive(Debug)]
pub struct PgRow {
    types: Arc<Vec<Type>>,
    values: Vec<Option<Bytes>>,
}

impl PgRow {
    pub fn try_get<'a, T: FromSql<'a>>(&'a self, idx: usize) -> Result<T, DbError> {
        let ty = self.types.get(idx).ok_or_else(|| DbError::Decode(format!("no column {idx}")))?;
        if !T::accepts(ty) {
            return Err(DbError::Decode(format!("column {idx} of type {ty} does not decode as requested")));
        }
        let raw = self.values.get(idx).and_then(|v| v.as_deref());
        T::from_sql_nullable(ty, raw).map_err(|e| DbError::Decode(format!("column {idx}: {e}")))
    }
}

/// The connection's byte stream: plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(buf).await,
            // rustls buffers records: flush so the whole message leaves now.
            Stream::Tls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
        }
    }

    async fn read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read_buf(buf).await,
            Stream::Tls(s) => s.read_buf(buf).await,
        }
    }
}

pub struct PgConn {
    stream: Stream,
    /// Keep statements prepared on this connection (named by a hash of their text), so each
    /// is planned once per connection rather than once per use. Only on direct connections:
    /// behind pgbouncer before 1.21 a named statement may live on another server connection.
    cache_statements: bool,
    prepared: std::collections::HashSet<u64>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// Set while a pipeline is in flight: a request dropped half-way leaves the protocol in
    /// an unknown state, and such a connection is discarded, never reused.
    broken: bool,
}

fn io_err(e: std::io::Error) -> DbError {
    DbError::Pool(format!("connection error: {e}"))
}

/// Ask for TLS (SSLRequest) and run the handshake. Exactly one byte of answer is read from
/// the socket before the handshake, so nothing a man in the middle slips in after the `S` can
/// be taken for the server's words.
async fn start_tls(
    mut tcp: TcpStream,
    cfg: &ConnectConfig,
    connector: tokio_rustls::TlsConnector,
    host: &str,
    port: u16,
) -> Result<Stream, DbError> {
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await.map_err(io_err)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io_err)?;
    match answer[0] {
        b'S' => {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| DbError::Pool(format!("{host} is not a TLS server name: {e}")))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| DbError::Pool(format!("TLS handshake with {host}:{port} failed: {e}")))?;
            Ok(Stream::Tls(Box::new(tls)))
        }
        b'N' if cfg.tls.mode == SslMode::Prefer => Ok(Stream::Plain(tcp)),
        b'N' => Err(DbError::Pool(format!(
            "the server at {host}:{port} does not accept TLS (sslmode={})",
            cfg.tls.mode.as_str()
        ))),
        _ => Err(DbError::Pool(format!("the server at {host}:{port} answered the TLS request unexpectedly"))),
    }
}

impl PgConn {
    pub async fn connect(cfg: &ConnectConfig, application_name: &str) -> Result<Self, DbError> {
        Self::connect_with(cfg, application_name, false).await
    }

    pub async fn connect_with(
        cfg: &ConnectConfig,
        application_name: &str,
        cache_statements: bool,
    ) -> Result<Self, DbError> {
        let host = match cfg.pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => return Err(DbError::Pool("the read pool needs a TCP host".into())),
        };
        let port = cfg.pg.get_ports().first().copied().unwrap_or(5432);
        let timeout = cfg.pg.get_connect_timeout().copied().unwrap_or(Duration::from_secs(5));
        let timed_out = || DbError::Pool(format!("connecting to {host}:{port} timed out"));
        let tcp = tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| timed_out())?
            .map_err(io_err)?;
        tcp.set_nodelay(true).map_err(io_err)?;
        let stream = match cfg.tls_connector() {
            None => Stream::Plain(tcp),
            Some(connector) => tokio::time::timeout(timeout, start_tls(tcp, cfg, connector, &host, port))
                .await
                .map_err(|_| timed_out())??,
        };
        let mut conn = PgConn {
            stream,
            cache_statements,
            prepared: std::collections::HashSet::new(),
            read_buf: BytesMut::with_capacity(16 * 1024),
            write_buf: BytesMut::new(),
            broken: true,
        };
        let user = cfg.pg.get_user().unwrap_or("postgres").to_owned();
        let dbname = cfg.pg.get_dbname().unwrap_or(&user).to_owned();
        let params = [
            ("user", user.as_str()),
            ("database", dbname.as_str()),
            ("application_name", application_name),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params.iter().copied(), &mut conn.write_buf).map_err(io_err)?;
        conn.flush().await?;
        let password = cfg.pg.get_password().map(<[u8]>::to_vec);
        let mut scram: Option<ScramSha256> = None;
        loop {
            match conn.next_message().await? {
                backend::Message::AuthenticationOk => {}
                backend::Message::AuthenticationCleartextPassword => {
                    let pw = password.as_deref().ok_or_else(|| DbError::Pool("a password is required".into()))?;
                    frontend::password_message(pw, &mut conn.write_buf).map_err(io_err)?;
                    conn.flush().await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let pw = password.as_deref().ok_or_else(|| DbError::Pool("a password is required".into()))?;
                    let hash = postgres_protocol::authentication::md5_hash(user.as_bytes(), pw, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut conn.write_buf).map_err(io_err)?;
                    conn.flush().await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let pw = password.as_deref().ok_or_else(|| DbError::Pool("a password is required".into()))?;
                    let mut mechanisms = body.mechanisms();
                    let mut supported = false;
                    while let Some(m) = mechanisms.next().map_err(io_err)? {
                        supported |= m == "SCRAM-SHA-256";
                    }
                    if !supported {
                        return Err(DbError::Pool("the server offers no supported SASL mechanism".into()));
                    }
                    // No channel binding (SCRAM-SHA-256-PLUS is not offered back), also over TLS.
                    let s = ScramSha256::new(pw, ChannelBinding::unsupported());
                    frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut conn.write_buf)
                        .map_err(io_err)?;
                    scram = Some(s);
                    conn.flush().await?;
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| DbError::Pool("unexpected SASL message".into()))?;
                    s.update(body.data()).map_err(io_err)?;
                    frontend::sasl_response(s.message(), &mut conn.write_buf).map_err(io_err)?;
                    conn.flush().await?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or_else(|| DbError::Pool("unexpected SASL message".into()))?;
                    s.finish(body.data()).map_err(io_err)?;
                }
                backend::Message::ErrorResponse(body) => return Err(server_error(&body)),
                backend::Message::ReadyForQuery(_) => break,
                backend::Message::ParameterStatus(_)
                | backend::Message::BackendKeyData(_)
                | backend::Message::NoticeResponse(_) => {}
                _ => return Err(DbError::Pool("unexpected message during start-up".into())),
            }
        }
        conn.broken = false;
        Ok(conn)
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    async fn flush(&mut self) -> Result<(), DbError> {
        let buf = self.write_buf.split();
        self.stream.write_all(&buf).await.map_err(io_err)
    }

    async fn next_message(&mut self) -> Result<backend::Message, DbError> {
        loop {
            if let Some(m) = backend::Message::parse(&mut self.read_buf).map_err(io_err)? {
                return Ok(m);
            }
            self.read_buf.reserve(8 * 1024);
            if self.stream.read_buf(&mut self.read_buf).await.map_err(io_err)? == 0 {
                return Err(DbError::Pool("the server closed the connection".into()));
            }
        }
    }

    /// Run `statements` as one implicit transaction (one Sync) and return the rows of the
    /// last one. If any fails, none of them commits, and the first error is returned.
    pub async fn pipeline(&mut self, statements: &[(&str, &[Param<'_>])]) -> Result<Vec<PgRow>, DbError> {
        if self.broken {
            return Err(DbError::Pool("connection is broken".into()));
        }
        self.broken = true;
        // Statements parsed by this pipeline, in order, to remember once their ParseComplete
        // arrives.
        let mut parsing: Vec<u64> = Vec::new();
        for (i, (sql, params)) in statements.iter().enumerate() {
            let key = statement_key(sql, params);
            let name = if self.cache_statements && (self.prepared.len() < MAX_CACHED || self.prepared.contains(&key)) {
                format!("authio_{key:016x}")
            } else {
                String::new()
            };
            if name.is_empty() || !self.prepared.contains(&key) {
                frontend::parse(&name, sql, params.iter().map(|(_, ty)| ty.oid()), &mut self.write_buf)
                    .map_err(io_err)?;
                parsing.push(if name.is_empty() { 0 } else { key });
            }
            let bound = frontend::bind(
                "",
                &name,
                params.iter().map(|_| 1i16),
                params.iter(),
                |(value, ty), buf| match value.to_sql_checked(ty, buf)? {
                    tokio_postgres::types::IsNull::Yes => Ok(IsNull::Yes),
                    tokio_postgres::types::IsNull::No => Ok(IsNull::No),
                },
                Some(1i16),
                &mut self.write_buf,
            );
            if let Err(e) = bound {
                self.write_buf.clear();
                self.broken = false;
                return Err(DbError::Decode(format!("encoding a parameter: {}", bind_error(e))));
            }
            if i + 1 == statements.len() {
                frontend::describe(b'P', "", &mut self.write_buf).map_err(io_err)?;
            }
            frontend::execute("", 0, &mut self.write_buf).map_err(io_err)?;
        }
        frontend::sync(&mut self.write_buf);
        self.flush().await?;

        let last = statements.len().saturating_sub(1);
        let mut statement = 0;
        let mut types: Arc<Vec<Type>> = Arc::new(Vec::new());
        let mut rows = Vec::new();
        let mut first_error: Option<DbError> = None;
        let mut parsed = 0;
        loop {
            match self.next_message().await? {
                backend::Message::ParseComplete => {
                    if let Some(&key) = parsing.get(parsed) {
                        if key != 0 {
                            self.prepared.insert(key);
                        }
                    }
                    parsed += 1;
                }
                backend::Message::RowDescription(body) => {
                    let mut fields = body.fields();
                    let mut t = Vec::new();
                    while let Some(f) = fields.next().map_err(io_err)? {
                        t.push(Type::from_oid(f.type_oid()).unwrap_or(Type::UNKNOWN));
                    }
                    types = Arc::new(t);
                }
                backend::Message::DataRow(body) if statement == last => {
                    let buf = body.buffer_bytes().clone();
                    let mut ranges = body.ranges();
                    let mut values = Vec::with_capacity(types.len());
                    while let Some(r) = ranges.next().map_err(io_err)? {
                        values.push(r.map(|r| buf.slice(r)));
                    }
                    rows.push(PgRow { types: types.clone(), values });
                }
                backend::Message::CommandComplete(_) | backend::Message::EmptyQueryResponse => statement += 1,
                backend::Message::ErrorResponse(body) if first_error.is_none() => {
                    first_error = Some(server_error(&body));
                }
                backend::Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        self.broken = false;
        match first_error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }
}

/// Statements kept prepared per connection, at most.
const MAX_CACHED: usize = 256;

fn statement_key(sql: &str, params: &[Param<'_>]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sql.hash(&mut h);
    for (_, ty) in params {
        ty.oid().hash(&mut h);
    }
    h.finish()
}

fn bind_error(e: frontend::BindError) -> String {
    match e {
        frontend::BindError::Conversion(e) => e.to_string(),
        frontend::BindError::Serialization(e) => e.to_string(),
    }
}

fn server_error(body: &backend::ErrorResponseBody) -> DbError {
    let (mut code, mut message) = (String::new(), String::new());
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    DbError::Server { code, message }
}

/// Pools of [`PgConn`], managed by deadpool.
pub struct PgConnManager {
    config: ConnectConfig,
    application_name: String,
    cache_statements: bool,
}

impl PgConnManager {
    pub fn new(config: ConnectConfig, application_name: &str, cache_statements: bool) -> Self {
        PgConnManager { config, application_name: application_name.to_owned(), cache_statements }
    }
}

impl deadpool::managed::Manager for PgConnManager {
    type Type = PgConn;
    type Error = DbError;

    async fn create(&self) -> Result<PgConn, DbError> {
        PgConn::connect_with(&self.config, &self.application_name, self.cache_statements).await
    }

    async fn recycle(
        &self,
        conn: &mut PgConn,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<DbError> {
        if conn.is_broken() {
            return Err(deadpool::managed::RecycleError::message("connection left mid-pipeline"));
        }
        Ok(())
    }
}

pub type ReadPool = deadpool::managed::Pool<PgConnManager>;

pub fn make_read_pool(url: &str, opts: &crate::pool::PoolOptions, cache_statements: bool) -> Result<ReadPool, DbError> {
    make_read_pool_with(crate::pool::parse_url(url)?, opts, cache_statements)
}

pub fn make_read_pool_with(
    mut cfg: ConnectConfig,
    opts: &crate::pool::PoolOptions,
    cache_statements: bool,
) -> Result<ReadPool, DbError> {
    cfg.pg.connect_timeout(opts.connect_timeout);
    ReadPool::builder(PgConnManager::new(cfg, &opts.application_name, cache_statements))
        .max_size(opts.max_size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(opts.wait_timeout))
        .create_timeout(Some(opts.connect_timeout))
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}
