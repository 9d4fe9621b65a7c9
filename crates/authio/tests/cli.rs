//! The binary, run as a user runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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
