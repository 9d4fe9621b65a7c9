//! The binary, run as a user runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Tests read rows by position freely; library code reads them by name (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::process::Command;

use authio_testkit::fresh_shared_db;

fn authio() -> Command {
    Command::new(env!("CARGO_BIN_EXE_authio"))
}

#[test]
fn help_explains_every_command() {
    let out = authio().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["dev", "serve", "migrate", "tenant"] {
        assert!(text.contains(cmd), "{cmd} missing from --help:\n{text}");
    }
    let out = authio().args(["tenant", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["create", "list", "show"] {
        assert!(text.contains(cmd), "{cmd} missing from tenant --help:\n{text}");
    }
    let out = authio().args(["dev", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("PostgreSQL"));
}

#[test]
fn dev_without_postgres_binaries_names_the_package_to_install() {
    let dir = std::env::temp_dir().join(format!("authio-nopg-{}", std::process::id()));
    let out = authio()
        .args(["dev", "--dir"])
        .arg(&dir)
        .env("PATH", "/nonexistent")
        .env("AUTHIO_PG_SEARCH_DIRS", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PostgreSQL server binaries") && err.contains("postgresql-15"), "{err}");
}

#[tokio::test]
async fn tenant_create_list_show_against_a_real_database() {
    let db = fresh_shared_db().await;
    let run = |args: &[&str]| {
        let out = authio()
            .args(args)
            .env("AUTHIO_ADMIN_URL", &db.admin_url)
            .env("AUTHIO_MASTER_KEY", authio_db::MasterKey::generate_base64())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&["tenant", "create", "--slug", "initech", "--name", "Initech", "--plan", "enterprise"]);
    assert!(ok, "{err}");
    assert!(out.contains("api key  sk_"), "{out}");
    let (ok, _, err) = run(&["tenant", "create", "--slug", "initech", "--name", "Again"]);
    assert!(!ok && err.contains("slug"), "{err}");
    let (ok, _, err) = run(&["tenant", "create", "--slug", "Bad Slug", "--name", "x"]);
    assert!(!ok && err.contains("invalid slug"), "{err}");
    let (ok, out, _) = run(&["tenant", "list"]);
    assert!(ok && out.contains("initech") && out.contains("enterprise") && out.contains("shared"), "{out}");
    let (ok, out, _) = run(&["tenant", "show", "initech"]);
    assert!(ok && out.contains("db_strategy  shared") && out.contains("project  default"), "{out}");
    let (ok, _, err) = run(&["tenant", "show", "nobody"]);
    assert!(!ok && err.contains("no tenant"), "{err}");

    // Key rotation: the first makes the keys, the second retires the first current key.
    let project = out.lines().find_map(|l| l.strip_prefix("project  default")).unwrap().trim().to_owned();
    let (ok, first, err) = run(&["keys", "rotate", "--project", &project]);
    assert!(ok && first.contains("current") && first.contains("(EdDSA)"), "{first}{err}");
    let (ok, _, err) = run(&["keys", "rotate", "--project", &project]);
    assert!(!ok && err.contains("force"), "a rotation right after the last is refused: {err}");
    let (ok, second, err) = run(&["keys", "rotate", "--project", &project, "--alg", "RS256", "--force"]);
    assert!(ok && second.contains("retired") && second.contains("(RS256)"), "{second}{err}");
    let next_of_first = first.lines().find_map(|l| l.strip_prefix("next     ")).unwrap().split(' ').next().unwrap();
    assert!(second.contains(&format!("current  {next_of_first}")), "the next key became current: {second}");
    let (ok, _, err) = run(&["keys", "rotate", "--project", &project, "--alg", "HS256", "--force"]);
    assert!(!ok && err.contains("--alg"), "{err}");
    let (ok, out, err) = run(&["audit", "verify", "--tenant", "initech"]);
    assert!(ok && out.contains("no audit events"), "{out}{err}");
    let (ok, _, err) = run(&["audit", "verify", "--tenant", "nobody"]);
    assert!(!ok && err.contains("no tenant"), "{err}");
    let (ok, _, err) = run(&["grant-operator", "--email", "nobody@initech.test"]);
    assert!(!ok && err.contains("no platform-tenant user"), "{err}");
}

/// The quick start: `authio dev` starts both clusters, seeds, serves the demo tenants (one on
/// a dedicated database), and Ctrl-C stops the server and the clusters.
#[tokio::test]
async fn dev_serves_seeded_demo_tenants_and_stops_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!("authio-dev-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Two consecutive free ports for the clusters.
    let pg_port = loop {
        let p = authio_db::cluster::free_port().unwrap();
        if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let http_port = authio_db::cluster::free_port().unwrap();
    let mut child = authio()
        .args(["dev", "--dir"])
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{http_port}"), "--pg-port", &pg_port.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Read the banner, then keep draining stdout so the process never writes to a closed pipe.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            if line.contains("Ctrl-C stops") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(std::mem::take(&mut text));
                }
            }
        }
    });
    let banner = tokio::time::timeout(std::time::Duration::from_secs(120), rx).await.expect("dev started").unwrap();
    assert!(banner.contains("dedicated database"), "{banner}");
    // The dedicated demo tenant's curl line works as printed.
    let curl = banner.lines().rfind(|l| l.contains("Bearer ")).expect("curl line");
    let key = curl.split("Bearer ").nth(1).unwrap().split('\'').next().unwrap();
    let url = curl.split_whitespace().last().unwrap();
    let r = reqwest::Client::new().get(url).bearer_auth(key).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["data"][0]["email"], "hank@globex.test");
    // The row lives on the dedicated cluster.
    let rows = authio_testkit::admin_query_strings(
        &format!("postgres://postgres@127.0.0.1:{}/authio_globex", pg_port + 1),
        "SELECT email FROM users",
    )
    .await;
    assert_eq!(rows, vec!["hank@globex.test"]);
    // The dedicated tenant's M2M line gets a token, and its user can sign in with the printed
    // password.
    let m2m = banner.lines().rfind(|l| l.contains("curl -u ")).expect("m2m line");
    let (id, secret) =
        m2m.split("curl -u ").nth(1).unwrap().split_whitespace().next().unwrap().split_once(':').unwrap();
    let r = reqwest::Client::new()
        .post(m2m.split_whitespace().last().unwrap())
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    assert!(r.json::<serde_json::Value>().await.unwrap()["access_token"].as_str().unwrap().split('.').count() == 3);
    let signin = banner.lines().rfind(|l| l.contains("/v1/auth/signin")).expect("sign-in line");
    let body = signin.split("-d '").nth(1).unwrap().split('\'').next().unwrap();
    let r = reqwest::Client::new()
        .post(signin.split_whitespace().last().unwrap())
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK, "{signin}");

    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", pg_port)).is_err(), "shared cluster still up");
    assert!(std::net::TcpStream::connect(("127.0.0.1", pg_port + 1)).is_err(), "dedicated cluster still up");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `authio tenant move` killed (the process aborted) right after each of its steps, then
/// `--resume`d: the tenant ends in exactly one home with all its rows, and `verify` agrees.
/// Killed before the switch and `--abort`ed: it stays where it was, with all its rows, and the
/// partial copy is gone. Both directions.
#[tokio::test]
async fn a_move_killed_at_any_step_resumes_or_aborts_into_exactly_one_home() {
    use authio_testkit::{admin_query_strings, clusters, seed_tenant, test_master_key_base64};
    use std::os::unix::process::ExitStatusExt;

    /// What `std::process::abort` ends a process with.
    const SIGABRT: i32 = 6;
    let db = fresh_shared_db().await;
    let run = |args: &[&str], kill_at: Option<&str>| {
        let mut cmd = authio();
        cmd.args(args).env("AUTHIO_ADMIN_URL", &db.admin_url).env("AUTHIO_MASTER_KEY", test_master_key_base64());
        if let Some(step) = kill_at {
            cmd.env("AUTHIO_FAULT_KILL_AT", step);
        }
        let out = cmd.output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let host = clusters().dedicated.admin_url("postgres");
    let (st, out, err) =
        run(&["dedicated-host", "add", "--name", "box-1", "--admin-dsn", &host, "--app-password", "unused"], None);
    assert!(st.success(), "{out}{err}");
    let (st, out, _) = run(&["dedicated-host", "list"], None);
    assert!(st.success() && out.contains("box-1"), "{out}");

    const ROWS: i64 = 300;
    let mut tenants = Vec::new();
    for slug in ["resumed", "aborted"] {
        let s = seed_tenant(&db, slug, authio_db::TenantKind::Customer, authio_core::types::Plan::Enterprise).await;
        admin_query_strings(
            &db.admin_url,
            &format!(
                "INSERT INTO users (tenant_id, project_id, id, email, created_at, updated_at)
                 SELECT '{t}', '{p}', gen_random_uuid(), 'u' || i || '@{slug}.test', now(), now()
                 FROM generate_series(1, {ROWS}) i;
                 INSERT INTO audit_events (tenant_id, project_id, id, occurred_at, action, actor_type)
                 SELECT '{t}', '{p}', gen_random_uuid(), now(), 'user.created', 'system' FROM generate_series(1, 20);
                 SELECT 1",
                t = s.tenant.id,
                p = s.project.id
            ),
        )
        .await;
        let (st, out, err) = run(&["tenant", "provision-dedicated", "--tenant", slug, "--host", "box-1"], None);
        assert!(st.success(), "{out}{err}");
        tenants.push(s);
    }
    let dedicated = clusters().dedicated.admin_url(&format!("authio_t_{}", tenants[0].tenant.id.simple()));
    let dedicated_b = clusters().dedicated.admin_url(&format!("authio_t_{}", tenants[1].tenant.id.simple()));

    // Where each copy stands: (strategy, at home on shared, at home on dedicated, rows on each).
    let state = |t: uuid::Uuid, ded: String| {
        let shared = db.admin_url.clone();
        async move {
            let q = format!(
                "SELECT authio_tenant_at_home('{t}')::text || ' ' || (SELECT count(*) FROM users WHERE tenant_id = '{t}')"
            );
            let s = admin_query_strings(&shared, &q).await[0].clone();
            let d = admin_query_strings(&ded, &q).await[0].clone();
            let strategy = admin_query_strings(&shared, &format!("SELECT db_strategy FROM tenants WHERE id = '{t}'"))
                .await[0]
                .clone();
            format!("{strategy} shared={s} dedicated={d}")
        }
    };
    let steps = ["copying", "subscribed", "synced", "cutover", "fenced", "target_home", "switched", "cleanup"];
    let mut to = "dedicated";
    for step in steps {
        let (st, _, err) = run(&["tenant", "move", "--tenant", "resumed", "--to", to], Some(step));
        assert_eq!(st.signal(), Some(SIGABRT), "killed at {step}: {err}");
        let (st, out, err) = run(&["tenant", "move", "--tenant", "resumed", "--resume"], None);
        assert!(st.success(), "resume after {step}: {out}{err}");
        assert!(out.contains("write pause"), "{out}");
        let now = state(tenants[0].tenant.id, dedicated.clone()).await;
        let expected = if to == "dedicated" {
            format!("dedicated shared=false {ROWS} dedicated=true {ROWS}")
        } else {
            format!("shared shared=true {ROWS} dedicated=false {ROWS}")
        };
        assert_eq!(now, expected, "after a kill at {step} and --resume");
        let (st, out, err) = run(&["tenant", "verify", "--tenant", "resumed"], None);
        assert!(st.success() && out.contains("match") && !out.contains("DIFFERS"), "verify after {step}: {out}{err}");
        to = if to == "dedicated" { "shared" } else { "dedicated" };
    }

    for step in &steps[..6] {
        let (st, _, err) = run(&["tenant", "move", "--tenant", "aborted", "--to", "dedicated"], Some(step));
        assert_eq!(st.signal(), Some(SIGABRT), "killed at {step}: {err}");
        let (st, out, err) = run(&["tenant", "move", "--tenant", "aborted", "--abort"], None);
        assert!(st.success(), "abort after {step}: {out}{err}");
        let now = state(tenants[1].tenant.id, dedicated_b.clone()).await;
        assert_eq!(now, format!("shared shared=true {ROWS} dedicated=false 0"), "after a kill at {step} and --abort");
    }
    // Past the switch, --abort is refused and --resume finishes.
    let (st, _, _) = run(&["tenant", "move", "--tenant", "aborted", "--to", "dedicated"], Some("switched"));
    assert_eq!(st.signal(), Some(SIGABRT));
    let (st, _, err) = run(&["tenant", "move", "--tenant", "aborted", "--abort"], None);
    assert!(!st.success() && err.contains("--resume"), "{err}");
    let (st, out, err) = run(&["tenant", "purge-source", "--tenant", "aborted", "--now"], None);
    assert!(!st.success() && err.contains("unfinished"), "purge-source refuses mid-move: {out}{err}");
    let (st, out, err) = run(&["tenant", "move", "--tenant", "aborted", "--resume"], None);
    assert!(st.success(), "{out}{err}");
    assert_eq!(
        state(tenants[1].tenant.id, dedicated_b.clone()).await,
        format!("dedicated shared=false {ROWS} dedicated=true {ROWS}")
    );
    let (st, out, err) = run(&["tenant", "purge-source", "--tenant", "aborted"], None);
    assert!(!st.success() && err.contains("rollback window"), "{out}{err}");
    let (st, out, err) = run(&["tenant", "purge-source", "--tenant", "aborted", "--now"], None);
    assert!(st.success(), "{out}{err}");
    assert_eq!(
        state(tenants[1].tenant.id, dedicated_b).await,
        format!("dedicated shared=false 0 dedicated=true {ROWS}")
    );
    let (st, out, err) = run(&["tenant", "show", "aborted"], None);
    assert!(st.success() && out.contains("aborted") && out.contains("done"), "{out}{err}");
}
