//! Local PostgreSQL clusters (and pgbouncer) for `authio dev` and the test kit.
//!
//! A cluster runs as a child process that dies with its parent (PR_SET_PDEATHSIG), so neither
//! a crashed test binary nor a killed `authio dev` leaves a server behind. Started as root,
//! servers run as the `postgres` user, which PostgreSQL requires.
#![allow(unsafe_code)]

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH or under \
         /usr/lib/postgresql/*/bin. Install PostgreSQL 15 server packages: on Debian/Ubuntu \
         `apt-get install postgresql-15` (or `postgresql`), on Fedora `dnf install postgresql15-server`, \
         on macOS `brew install postgresql@15`; then put its bin directory on PATH"
    )]
    BinariesNotFound,
    #[error("pgbouncer was not found on PATH: install it (Debian/Ubuntu: `apt-get install pgbouncer`)")]
    PgBouncerNotFound,
    #[error("running as root, but there is no `postgres` user to run the server as: create one (useradd -r postgres)")]
    NoPostgresUser,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server in {dir} did not accept connections within {secs}s; see {log}")]
    NotReady { dir: String, secs: u64, log: String },
}

#[derive(Clone, Debug)]
pub struct PgBinaries {
    pub bin_dir: PathBuf,
}

impl PgBinaries {
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// Find `initdb`, `pg_ctl` and `postgres`: on PATH first, then Debian's versioned directories.
pub fn find_pg_binaries() -> Result<PgBinaries, ClusterError> {
    let has_all = |dir: &Path| ["initdb", "pg_ctl", "postgres"].iter().all(|t| dir.join(t).is_file());
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_all(&dir) {
                return Ok(PgBinaries { bin_dir: dir });
            }
        }
    }
    // AUTHIO_PG_SEARCH_DIRS (colon-separated parents of versioned bin directories) replaces
    // the default /usr/lib/postgresql.
    let parents = std::env::var("AUTHIO_PG_SEARCH_DIRS").unwrap_or_else(|_| "/usr/lib/postgresql".into());
    let mut versioned: Vec<PathBuf> = parents
        .split(':')
        .flat_map(|p| fs::read_dir(p).into_iter().flatten())
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .collect();
    versioned.sort();
    versioned
        .into_iter()
        .rev()
        .find(|d| has_all(d))
        .map(|bin_dir| PgBinaries { bin_dir })
        .ok_or(ClusterError::BinariesNotFound)
}

pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of the `postgres` user, when we must drop privileges to it.
fn run_as() -> Result<Option<(u32, u32)>, ClusterError> {
    if !is_root() {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "postgres" {
            let uid = f[2].parse().map_err(|_| ClusterError::NoPostgresUser)?;
            let gid = f[3].parse().map_err(|_| ClusterError::NoPostgresUser)?;
            return Ok(Some((uid, gid)));
        }
    }
    Err(ClusterError::NoPostgresUser)
}

fn as_server_user(cmd: &mut Command) -> Result<(), ClusterError> {
    if let Some((uid, gid)) = run_as()? {
        cmd.uid(uid).gid(gid);
        cmd.env("HOME", "/tmp");
    }
    Ok(())
}

fn chown_tree(path: &Path) -> Result<(), ClusterError> {
    if let Some((uid, gid)) = run_as()? {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        if path.is_dir() {
            for e in fs::read_dir(path)? {
                chown_tree(&e?.path())?;
            }
        }
    }
    Ok(())
}

/// Spawn a child that receives SIGINT when this process dies. The spawning thread parks
/// forever, because PDEATHSIG fires when the *thread* that forked the child exits.
fn spawn_tied_to_process(mut cmd: Command) -> Result<Child, ClusterError> {
    // SAFETY: prctl is async-signal-safe; the closure runs after fork (and after the uid/gid
    // change, which would otherwise reset the parent-death signal) and touches no shared state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("authio-pg-child".into()).spawn(move || {
        let _ = tx.send(cmd.spawn());
        loop {
            std::thread::park();
        }
    })?;
    rx.recv()
        .map_err(|_| ClusterError::Command { what: "spawn".into(), detail: "spawner thread died".into() })?
        .map_err(ClusterError::Io)
}

/// Any free loopback port (racy by nature; good enough for throwaway servers).
pub fn free_port() -> Result<u16, ClusterError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Trade durability for speed (fsync off): for throwaway test clusters only.
    pub throwaway: bool,
}

/// TLS for a local cluster: the server's certificate chain and key (PEM), and `pg_hba.conf`
/// rules placed ahead of initdb's (the first matching rule wins).
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub hba_rules: Vec<String>,
}

const HBA_BEGIN: &str = "# begin rules written by authio";
const HBA_END: &str = "# end rules written by authio";

pub struct LocalCluster {
    pub dir: PathBuf,
    pub port: u16,
    bins: PgBinaries,
    child: Mutex<Option<Child>>,
}

impl LocalCluster {
    /// Create the cluster in `dir` if it does not exist yet, and set its configuration.
    pub fn init(dir: &Path, port: u16, opts: &ClusterOptions) -> Result<Self, ClusterError> {
        let bins = find_pg_binaries()?;
        let dir = dir.to_path_buf();
        if !dir.join("PG_VERSION").exists() {
            fs::create_dir_all(&dir)?;
            chown_tree(&dir)?;
            let mut cmd = Command::new(bins.tool("initdb"));
            cmd.arg("-D").arg(&dir).args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"]);
            as_server_user(&mut cmd)?;
            let out = cmd.stdin(Stdio::null()).output()?;
            if !out.status.success() {
                return Err(ClusterError::Command {
                    what: "initdb".into(),
                    detail: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
        }
        let mut conf = format!(
            "# written by authio\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n\
             wal_level = logical\nmax_wal_senders = 40\nmax_replication_slots = 40\n\
             max_logical_replication_workers = 16\nmax_worker_processes = 32\nmax_connections = 400\n\
             shared_buffers = 128MB\nlog_min_messages = warning\nlog_min_error_statement = panic\n"
        );
        if opts.throwaway {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        let auto = dir.join("postgresql.auto.conf");
        let mut f = fs::File::create(&auto)?;
        f.write_all(conf.as_bytes())?;
        drop(f);
        chown_tree(&auto)?;
        Ok(LocalCluster { dir, port, bins, child: Mutex::new(None) })
    }

    /// Turn TLS on; call after [`LocalCluster::init`] and before [`LocalCluster::start`].
    /// Writes `server.crt` and `server.key` into the data directory (the key 0600 and owned by
    /// the server's user, or PostgreSQL refuses it), sets `ssl = on`, and puts `hba_rules`
    /// ahead of initdb's rules (replacing rules an earlier call wrote).
    pub fn enable_tls(&self, tls: &ServerTls) -> Result<(), ClusterError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let cert = self.dir.join("server.crt");
        fs::write(&cert, &tls.cert_pem)?;
        let key = self.dir.join("server.key");
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&key)?;
        f.write_all(tls.key_pem.as_bytes())?;
        drop(f);
        // `mode` applies only to a file created now.
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;

        let hba = self.dir.join("pg_hba.conf");
        let current = fs::read_to_string(&hba)?;
        let mut theirs = String::new();
        let mut inside = false;
        for line in current.lines() {
            match line.trim() {
                HBA_BEGIN => inside = true,
                HBA_END => inside = false,
                _ if !inside => {
                    theirs.push_str(line);
                    theirs.push('\n');
                }
                _ => {}
            }
        }
        let mut rules = format!("{HBA_BEGIN}\n");
        for r in &tls.hba_rules {
            rules.push_str(r);
            rules.push('\n');
        }
        rules.push_str(HBA_END);
        rules.push('\n');
        fs::write(&hba, rules + &theirs)?;

        let auto = self.dir.join("postgresql.auto.conf");
        let mut f = fs::OpenOptions::new().append(true).open(&auto)?;
        f.write_all(b"ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")?;
        drop(f);
        for p in [&cert, &key, &hba, &auto] {
            chown_tree(p)?;
        }
        Ok(())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    /// Start the server as a child of this process and wait until it accepts connections.
    pub fn start(&self) -> Result<(), ClusterError> {
        let pid_file = self.dir.join("postmaster.pid");
        if pid_file.exists() {
            // A previous run that was killed hard may leave a pid file; postgres itself
            // refuses to start if that server still runs.
            let _ = fs::remove_file(&pid_file);
        }
        let log = fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let mut cmd = Command::new(self.bins.tool("postgres"));
        cmd.arg("-D").arg(&self.dir).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        as_server_user(&mut cmd)?;
        let child = spawn_tied_to_process(cmd)?;
        if let Ok(mut c) = self.child.lock() {
            *c = Some(child);
        }
        // An open port is not enough: until recovery and start-up finish, the server answers
        // connections with 57P03 "the database system is starting up". `pg_ctl -w` waits for
        // the status line of postmaster.pid to say "ready"; so does this.
        let deadline = Instant::now() + Duration::from_secs(60);
        let ready = wait_for_port(self.port, Duration::from_secs(60))
            .and_then(|()| wait_until_ready(&pid_file, deadline.saturating_duration_since(Instant::now())));
        ready.map_err(|_| ClusterError::NotReady {
            dir: self.dir.display().to_string(),
            secs: 60,
            log: self.log_path().display().to_string(),
        })
    }

    /// Fast shutdown (SIGINT), waiting for the server to exit.
    pub fn stop(&self) {
        if let Ok(mut c) = self.child.lock() {
            if let Some(mut child) = c.take() {
                signal(&child, libc::SIGINT);
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Kill the server abruptly (to test what a crash of the database does).
    pub fn kill(&self) {
        if let Ok(mut c) = self.child.lock() {
            if let Some(mut child) = c.take() {
                signal(&child, libc::SIGQUIT);
                let _ = child.wait();
            }
        }
    }

    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    pub fn admin_url(&self, db: &str) -> String {
        self.url("postgres", db)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill with a pid we spawned and a valid signal number.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn wait_for_port(port: u16, limit: Duration) -> Result<(), ()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(())
}

/// Wait until the postmaster's status line (the 8th of postmaster.pid) says it accepts
/// connections, as `pg_ctl -w` does.
fn wait_until_ready(pid_file: &Path, limit: Duration) -> Result<(), ()> {
    let deadline = Instant::now() + limit;
    loop {
        if fs::read_to_string(pid_file).is_ok_and(|s| pm_status_ready(&s)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a postmaster.pid's status line (`LOCK_FILE_LINE_PM_STATUS`, line 8) is "ready".
fn pm_status_ready(pid_file: &str) -> bool {
    pid_file.lines().nth(7).is_some_and(|l| l.trim() == "ready")
}

/// pgbouncer in transaction-pooling mode in front of a local cluster.
pub struct LocalPgBouncer {
    pub port: u16,
    child: Mutex<Option<Child>>,
}

impl LocalPgBouncer {
    pub fn start(dir: &Path, port: u16, target_port: u16) -> Result<Self, ClusterError> {
        let bin = find_on_path("pgbouncer")
            .or_else(|| Some(PathBuf::from("/usr/sbin/pgbouncer")).filter(|p| p.is_file()))
            .ok_or(ClusterError::PgBouncerNotFound)?;
        fs::create_dir_all(dir)?;
        let ini = dir.join("pgbouncer.ini");
        let users = dir.join("userlist.txt");
        fs::write(&users, "\"authio_app\" \"\"\n\"postgres\" \"\"\n")?;
        fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={target_port}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
                 listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {}\npool_mode = transaction\n\
                 max_client_conn = 2000\ndefault_pool_size = 40\nmax_db_connections = 0\n\
                 ignore_startup_parameters = extra_float_digits,options\nserver_reset_query =\n\
                 pidfile = {}\nlog_connections = 0\nlog_disconnections = 0\n",
                users.display(),
                dir.join("pgbouncer.pid").display()
            ),
        )?;
        chown_tree(dir)?;
        let log = fs::OpenOptions::new().create(true).append(true).open(dir.join("pgbouncer.log"))?;
        let mut cmd = Command::new(bin);
        cmd.arg(&ini).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        as_server_user(&mut cmd)?;
        let child = spawn_tied_to_process(cmd)?;
        wait_for_port(port, Duration::from_secs(20)).map_err(|_| ClusterError::NotReady {
            dir: dir.display().to_string(),
            secs: 20,
            log: dir.join("pgbouncer.log").display().to_string(),
        })?;
        Ok(LocalPgBouncer { port, child: Mutex::new(Some(child)) })
    }

    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for LocalPgBouncer {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            if let Some(mut child) = c.take() {
                signal(&child, libc::SIGINT);
                let _ = child.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pm_status_ready;

    #[test]
    fn only_a_ready_status_line_counts() {
        let starting = "4242\n/var/lib/pg\n1700000000\n5432\n/tmp\n127.0.0.1\n  5432001    42\nstarting\n";
        let ready = starting.replace("starting", "ready   ");
        assert!(!pm_status_ready(starting));
        assert!(pm_status_ready(&ready));
        // A file still being written (fewer than 8 lines) is not ready either.
        assert!(!pm_status_ready("4242\n/var/lib/pg\n"));
    }
}
