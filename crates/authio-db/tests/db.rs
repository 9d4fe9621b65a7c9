//! The data layer against real PostgreSQL: the router's platform invariant, dedicated routing,
//! tenant isolation under RLS (direct and through pgbouncer), the home fence, the route cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Tests read rows by position freely; library code reads them by name (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use authio_core::identity::users;
use authio_core::types::{Email, Plan};
use authio_core::SystemClock;
use authio_db::{DbError, Router, RouterError, RouterSettings, Scope, TenantKind, Type};
use authio_testkit::{
    admin_query_strings, clusters, fresh_shared_db, make_dedicated, router_for, router_settings, seed_tenant,
    via_pgbouncer, Seeded, TestDb,
};
use uuid::Uuid;

// In this binary rather than a file of its own: every file under tests/ links separately.
#[path = "db/tls.rs"]
mod tls;

fn scope_of(s: &Seeded) -> Scope {
    Scope::project(s.tenant.id, s.project.id, s.tenant.tenant_kind())
}

async fn current_db(router: &Router, scope: &Scope) -> (String, i32) {
    let tx = router.begin(scope).await.unwrap();
    let row = tx.query_one("SELECT current_database()::text, inet_server_port()", &[]).await.unwrap();
    let out = (row.get(0), row.get(1));
    tx.commit().await.unwrap();
    out
}

#[tokio::test]
async fn router_pool_for_or_err_platform_tenant_returns_shared_with_err() {
    let shared = fresh_shared_db().await;
    let platform = seed_tenant(&shared, "platform", TenantKind::Platform, Plan::Enterprise).await;
    let router = router_for(&shared, &shared.app_url, router_settings());
    let scope = scope_of(&platform);

    // While the row says shared: the shared pool, no error.
    let (pool, err) = router.pool_for_or_err(&scope).await.unwrap();
    assert!(err.is_none());
    let c = pool.get().await.unwrap();
    let db: String = c.query_one("SELECT current_database()::text", &[]).await.unwrap().get(0);
    assert_eq!(db, shared.name);
    drop(c);

    // The row now says dedicated: still the shared pool, together with the refusal.
    authio_core::tenancy::control::ControlPlane::new(shared.admin_url.clone())
        .set_db_strategy(platform.tenant.id, "dedicated")
        .await
        .unwrap();
    router.cache().clear();
    let (pool, err) = router.pool_for_or_err(&scope).await.unwrap();
    assert_eq!(err, Some(RouterError::PlatformTenantNoDedicatedPool));
    let c = pool.get().await.unwrap();
    let db: String = c.query_one("SELECT current_database()::text", &[]).await.unwrap().get(0);
    assert_eq!(db, shared.name);
    assert_eq!(router.dedicated_pools_opened(), 0);
}

#[tokio::test]
async fn router_pool_for_or_err_platform_tenant_with_dedicated_strategy_still_refuses() {
    let shared = fresh_shared_db().await;
    let platform = seed_tenant(&shared, "platform", TenantKind::Platform, Plan::Enterprise).await;
    // Even with a dedicated database recorded for it (written behind the control plane's
    // back, which refuses to do so), the platform tenant is never routed there.
    let ded = authio_testkit::fresh_dedicated_db().await;
    let key = authio_testkit::test_master_key();
    let c = authio_db::pool::connect(&shared.admin_url, "test").await.unwrap();
    c.execute(
        "INSERT INTO dedicated_databases (tenant_id, database_name, app_dsn_enc, admin_dsn_enc) VALUES ($1, $2, $3, $4)",
        &[&platform.tenant.id, &ded.name, &key.encrypt(&ded.app_url).unwrap(), &key.encrypt(&ded.admin_url).unwrap()],
    )
    .await
    .unwrap();
    c.execute("UPDATE tenants SET db_strategy = 'dedicated' WHERE id = $1", &[&platform.tenant.id]).await.unwrap();

    let router = router_for(&shared, &shared.app_url, router_settings());
    for kind in [TenantKind::Platform, TenantKind::Customer] {
        // A scope that (wrongly) claims customer is still judged by the tenant's row.
        let scope = Scope::project(platform.tenant.id, platform.project.id, kind);
        match router.pool_for(&scope).await {
            Err(DbError::Router(RouterError::PlatformTenantNoDedicatedPool)) => {}
            other => panic!("expected PlatformTenantNoDedicatedPool, got {:?}", other.map(|_| "a pool")),
        }
        let (_, err) = router.pool_for_or_err(&scope).await.unwrap();
        assert_eq!(err, Some(RouterError::PlatformTenantNoDedicatedPool));
    }
    // Scoped work lands on shared, never on the dedicated database.
    let scope = scope_of(&platform);
    assert_eq!(current_db(&router, &scope).await.0, shared.name);
    users::create(&router, &SystemClock, &scope, &Email::parse("op@authio.dev").unwrap()).await.unwrap();
    assert_eq!(admin_query_strings(&shared.admin_url, "SELECT email FROM users").await, vec!["op@authio.dev"]);
    assert!(admin_query_strings(&ded.admin_url, "SELECT email FROM users").await.is_empty());
    assert_eq!(router.dedicated_pools_opened(), 0);
    assert!(router.platform_refusals() >= 2);
}

#[tokio::test]
async fn dedicated_tenant_routes_to_its_own_cluster_and_writes_land_there() {
    let shared = fresh_shared_db().await;
    let a = seed_tenant(&shared, "alpha", TenantKind::Customer, Plan::Free).await;
    let b = seed_tenant(&shared, "bravo", TenantKind::Customer, Plan::Enterprise).await;
    let ded = make_dedicated(&shared, &b.tenant).await;
    let router = router_for(&shared, &shared.app_url, router_settings());

    let (db_a, port_a) = current_db(&router, &scope_of(&a)).await;
    let (db_b, port_b) = current_db(&router, &scope_of(&b)).await;
    assert_eq!((db_a.as_str(), port_a as u16), (shared.name.as_str(), clusters().shared.port()));
    assert_eq!((db_b.as_str(), port_b as u16), (ded.name.as_str(), clusters().dedicated.port()));
    assert_ne!(port_a, port_b, "two physical clusters");

    users::create(&router, &SystemClock, &scope_of(&a), &Email::parse("a@alpha.test").unwrap()).await.unwrap();
    users::create(&router, &SystemClock, &scope_of(&b), &Email::parse("b@bravo.test").unwrap()).await.unwrap();
    assert_eq!(
        admin_query_strings(&shared.admin_url, "SELECT email FROM users ORDER BY email").await,
        vec!["a@alpha.test"]
    );
    assert_eq!(
        admin_query_strings(&ded.admin_url, "SELECT email FROM users ORDER BY email").await,
        vec!["b@bravo.test"]
    );
    let listed = users::list(&router, &read_users(&scope_of(&b)), 10, None).await.unwrap();
    assert_eq!(listed.iter().map(|u| u.email.as_str()).collect::<Vec<_>>(), vec!["b@bravo.test"]);
    assert_eq!(router.open_dedicated_pools(), 1);
}

/// The isolation properties, run against `app_url` (direct, or through pgbouncer).
async fn isolation_suite(shared: &TestDb, app_url: &str) {
    let a = seed_tenant(shared, "tenant-a", TenantKind::Customer, Plan::Pro).await;
    let b = seed_tenant(shared, "tenant-b", TenantKind::Customer, Plan::Pro).await;
    let through_pgbouncer = app_url != shared.app_url;
    let router = router_for(
        shared,
        app_url,
        RouterSettings { listen: false, statement_cache: !through_pgbouncer, ..router_settings() },
    );
    let (sa, sb) = (scope_of(&a), scope_of(&b));
    let ua = users::create(&router, &SystemClock, &sa, &Email::parse("a1@a.test").unwrap()).await.unwrap();
    let ub = users::create(&router, &SystemClock, &sb, &Email::parse("b1@b.test").unwrap()).await.unwrap();

    // Under A's scope no row of B is visible, even when asked for by id.
    let tx = router.begin(&sa).await.unwrap();
    let emails: Vec<String> =
        tx.query("SELECT email FROM users", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(emails, vec!["a1@a.test"]);
    assert!(tx.query_opt("SELECT 1 FROM users WHERE id = $1", &[(&ub.id, Type::UUID)]).await.unwrap().is_none());
    // Updating B's row touches nothing.
    let touched =
        tx.query("UPDATE users SET disabled = true WHERE id = $1 RETURNING id", &[(&ub.id, Type::UUID)]).await.unwrap();
    assert!(touched.is_empty());
    tx.commit().await.unwrap();

    // Inserting a row with B's tenant_id under A's scope fails.
    let tx = router.begin(&sa).await.unwrap();
    let id = Uuid::now_v7();
    let err = tx
        .query(
            "INSERT INTO users (tenant_id, project_id, id, email, created_at, updated_at) VALUES ($1, $2, $3, 'x@b.test', now(), now())",
            &[(&b.tenant.id, Type::UUID), (&b.project.id, Type::UUID), (&id, Type::UUID)],
        )
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("42501"), "{err}");
    drop(tx);
    // Moving one's own row to B fails (WITH CHECK).
    let tx = router.begin(&sa).await.unwrap();
    let err = tx
        .query("UPDATE users SET tenant_id = $1 WHERE id = $2", &[(&b.tenant.id, Type::UUID), (&ua.id, Type::UUID)])
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("42501"), "{err}");
    drop(tx);

    // As authio_app with no GUC bound: zero rows; and the role cannot switch RLS off.
    let raw = authio_db::pool::connect(app_url, "test").await.unwrap();
    let n: i64 = raw.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
    for stmt in [
        "ALTER TABLE users DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE users NO FORCE ROW LEVEL SECURITY",
        "ALTER POLICY project_scope_at_home ON users USING (true)",
        "DROP POLICY project_scope_at_home ON users",
        "CREATE POLICY open ON users USING (true)",
        "ALTER TABLE users OWNER TO authio_app",
    ] {
        let e = raw.batch_execute(stmt).await.expect_err(stmt);
        assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{stmt}: {e}");
    }
    // Asking for row_security = off does not bypass: the query is refused instead.
    let e = raw
        .batch_execute("BEGIN; SET LOCAL row_security = off; SELECT * FROM users; COMMIT")
        .await
        .expect_err("row_security=off must not bypass FORCE");
    assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e}");
    raw.batch_execute("ROLLBACK").await.ok();
    let attrs: (bool, bool) = {
        let r = raw
            .query_one("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(attrs, (false, false));

    // A GUC set in one transaction is gone in the next on the same connection.
    raw.batch_execute(&format!(
        "BEGIN; SELECT set_config('authio.tenant_id', '{}', true), set_config('authio.project_id', '{}', true); COMMIT",
        a.tenant.id, a.project.id
    ))
    .await
    .unwrap();
    let after: Option<String> =
        raw.query_one("SELECT current_setting('authio.tenant_id', true)", &[]).await.unwrap().get(0);
    assert!(after.as_deref().unwrap_or("").is_empty(), "GUC leaked: {after:?}");
    let n: i64 = raw.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);

    // Through the pool: after scoped transactions, an unscoped read sees nothing.
    for _ in 0..20 {
        users::list(&router, &read_users(&sa), 10, None).await.unwrap();
    }
    let pool = router.pool_for(&sa).await.unwrap();
    for _ in 0..8 {
        let c = pool.get().await.unwrap();
        let n: i64 = c.query_typed("SELECT count(*) FROM users", &[]).await.unwrap()[0].get(0);
        assert_eq!(n, 0, "a pooled connection kept a scope");
    }
    router.shutdown();

    // The pipelined read path: the bind and the read share one implicit transaction (one
    // Sync); the next pipeline on the same connection starts unscoped.
    let cfg = authio_db::pool::parse_url(app_url).unwrap();
    let mut conn = authio_db::pipeline::PgConn::connect(&cfg, "test").await.unwrap();
    let (t, p) = (a.tenant.id.to_string(), a.project.id.to_string());
    let bind = "SELECT set_config('authio.tenant_id', $1, true), set_config('authio.project_id', $2, true)";
    let rows = conn
        .pipeline(&[(bind, &[(&t, Type::TEXT), (&p, Type::TEXT)]), ("SELECT count(*) FROM users", &[])])
        .await
        .unwrap();
    assert_eq!(rows[0].try_get::<i64>(0).unwrap(), 1);
    let rows = conn.pipeline(&[("SELECT count(*) FROM users", &[])]).await.unwrap();
    assert_eq!(rows[0].try_get::<i64>(0).unwrap(), 0, "the scope outlived its pipeline");
    let rows = conn.pipeline(&[("SELECT current_setting('authio.tenant_id', true)", &[])]).await.unwrap();
    assert!(rows[0].try_get::<Option<String>>(0).unwrap().unwrap_or_default().is_empty());
    // A failing statement rolls back the whole pipeline, and the connection stays usable.
    let id = Uuid::now_v7();
    let insert = "INSERT INTO users (tenant_id, project_id, id, email, created_at, updated_at) VALUES ($1, $2, $3, 'p@a.test', now(), now())";
    let err = conn
        .pipeline(&[
            (bind, &[(&t, Type::TEXT), (&p, Type::TEXT)]),
            (insert, &[(&a.tenant.id, Type::UUID), (&a.project.id, Type::UUID), (&id, Type::UUID)]),
            ("SELECT 1/0", &[]),
        ])
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("22012"));
    assert!(!conn.is_broken());
    let rows = conn
        .pipeline(&[(bind, &[(&t, Type::TEXT), (&p, Type::TEXT)]), ("SELECT count(*) FROM users", &[])])
        .await
        .unwrap();
    assert_eq!(rows[0].try_get::<i64>(0).unwrap(), 1, "the failed pipeline's insert must not commit");
}

#[tokio::test]
async fn isolation_direct() {
    let shared = fresh_shared_db().await;
    isolation_suite(&shared, &shared.app_url.clone()).await;
}

#[tokio::test]
async fn isolation_through_pgbouncer_transaction_pooling() {
    let shared = fresh_shared_db().await;
    let url = via_pgbouncer(&shared);
    // It really is pgbouncer answering.
    let c = authio_db::pool::connect(&url, "test").await.unwrap();
    let port: i32 = c.query_one("SELECT inet_server_port()", &[]).await.unwrap().get(0);
    assert_eq!(port as u16, clusters().shared.port());
    assert!(url.contains(&format!(":{}/", clusters().pgbouncer().port)));
    isolation_suite(&shared, &url).await;
}

#[tokio::test]
async fn home_fence_blocks_reads_and_writes_whatever_the_gucs_say() {
    let shared = fresh_shared_db().await;
    let a = seed_tenant(&shared, "fenced", TenantKind::Customer, Plan::Enterprise).await;
    let router = router_for(
        &shared,
        &shared.app_url,
        RouterSettings { cutover_wait: Duration::from_millis(300), ..router_settings() },
    );
    let sa = scope_of(&a);
    let u = users::create(&router, &SystemClock, &sa, &Email::parse("kept@f.test").unwrap()).await.unwrap();

    authio_db::migrate::set_home(&shared.admin_url, a.tenant.id, false).await.unwrap();
    // The router is told at once (the bind statement enters through the fence); with no new
    // route to follow it waits its bound, then answers "moving, retry".
    let started = std::time::Instant::now();
    let err = router.begin(&sa).await.err().expect("fenced");
    assert!(matches!(err, DbError::Router(RouterError::MoveInProgress(_))), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    // ...and even a transaction that skips that check sees and changes nothing.
    let raw_pool = router.pool_for(&sa).await.unwrap();
    let raw = raw_pool.get().await.unwrap();
    raw.batch_execute(&format!(
        "BEGIN; SELECT set_config('authio.tenant_id', '{}', true), set_config('authio.project_id', '{}', true)",
        a.tenant.id, a.project.id
    ))
    .await
    .unwrap();
    let tx = &raw;
    assert!(tx.query("SELECT * FROM users", &[]).await.unwrap().is_empty());
    assert!(tx
        .query("UPDATE users SET disabled = true WHERE id = $1 RETURNING id", &[&u.id])
        .await
        .unwrap()
        .is_empty());
    assert!(tx.query("DELETE FROM users RETURNING id", &[]).await.unwrap().is_empty());
    let e = tx
        .batch_execute(&format!(
            "INSERT INTO users (tenant_id, project_id, id, email, created_at, updated_at) VALUES ('{}', '{}', '{}', 'n@f.test', now(), now())",
            a.tenant.id, a.project.id, Uuid::now_v7()
        ))
        .await
        .expect_err("insert refused by the fence");
    assert_eq!(e.code().map(|c| c.code()), Some("42501"));
    raw.batch_execute("ROLLBACK").await.unwrap();
    drop(raw);
    let err = users::create(&router, &SystemClock, &sa, &Email::parse("new@f.test").unwrap()).await.unwrap_err();
    assert!(matches!(&err, authio_core::CoreError::Db(DbError::Router(RouterError::MoveInProgress(_)))), "{err:?}");
    // A pipelined write (bind and statement with one Sync) is refused the same way.
    let (t, p, id) = (a.tenant.id, a.project.id, Uuid::now_v7());
    let err = router
        .write(
            &sa,
            &[(
                "INSERT INTO users (tenant_id, project_id, id, email, created_at, updated_at) VALUES ($1, $2, $3, 'w@f.test', now(), now())",
                &[(&t, authio_db::Type::UUID), (&p, authio_db::Type::UUID), (&id, authio_db::Type::UUID)],
            )],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::Router(RouterError::MoveInProgress(_))), "{err:?}");
    // The rows are still there, untouched.
    assert_eq!(
        admin_query_strings(&shared.admin_url, "SELECT email || ':' || disabled FROM users").await,
        vec!["kept@f.test:false"]
    );

    // A dedicated database admits only its tenant, and only once marked at home.
    let ded = authio_testkit::fresh_dedicated_db().await;
    authio_db::migrate::mark_dedicated(&ded.admin_url, a.tenant.id).await.unwrap();
    let c = authio_db::pool::connect(&ded.app_url, "test").await.unwrap();
    let bind = format!(
        "BEGIN; SELECT set_config('authio.tenant_id', '{}', true), set_config('authio.project_id', '{}', true);",
        a.tenant.id, a.project.id
    );
    let insert = format!("{bind} INSERT INTO users (tenant_id, project_id, id, email, created_at, updated_at) VALUES ('{}', '{}', '{}', 'd@f.test', now(), now()); COMMIT", a.tenant.id, a.project.id, Uuid::now_v7());
    let e = c.batch_execute(&insert).await.expect_err("not at home yet");
    assert_eq!(e.code().map(|c| c.code()), Some("42501"));
    c.batch_execute("ROLLBACK").await.ok();
    authio_db::migrate::set_home(&ded.admin_url, a.tenant.id, true).await.unwrap();
    c.batch_execute(&insert).await.unwrap();
    // Another tenant is never at home on this dedicated database.
    let other = Uuid::now_v7();
    let e = c
        .batch_execute(&format!("BEGIN; SELECT set_config('authio.tenant_id', '{other}', true), set_config('authio.project_id', '{other}', true); INSERT INTO users (tenant_id, project_id, id, email, created_at, updated_at) VALUES ('{other}', '{other}', '{}', 'o@o.test', now(), now()); COMMIT", Uuid::now_v7()))
        .await
        .expect_err("other tenant");
    assert_eq!(e.code().map(|c| c.code()), Some("42501"));
}

async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test]
async fn route_change_reaches_another_instance_through_notify_within_a_second() {
    let shared = fresh_shared_db().await;
    let t = seed_tenant(&shared, "moving", TenantKind::Customer, Plan::Enterprise).await;
    // Instance 2 re-reads only hourly: only NOTIFY can tell it in time.
    let one = router_for(&shared, &shared.app_url, router_settings());
    let two = router_for(
        &shared,
        &shared.app_url,
        RouterSettings { route_reread_interval: Duration::from_secs(3600), ..router_settings() },
    );
    wait_until(Duration::from_secs(5), || two.listener_connected()).await.expect("listener up");
    let scope = scope_of(&t);
    assert_eq!(current_db(&one, &scope).await.0, shared.name);
    assert_eq!(current_db(&two, &scope).await.0, shared.name);
    let before = two.cache().get(&t.tenant.id).expect("cached").epoch;

    let ded = make_dedicated(&shared, &t.tenant).await;
    let took = wait_until(Duration::from_secs(1), || two.cache().get(&t.tenant.id).is_none())
        .await
        .expect("NOTIFY did not invalidate instance two within a second");
    assert_eq!(current_db(&two, &scope).await.0, ded.name, "took {took:?}");
    assert!(two.cache().get(&t.tenant.id).unwrap().epoch > before);
}

#[tokio::test]
async fn route_change_reaches_an_instance_that_missed_notify_through_the_reread() {
    let shared = fresh_shared_db().await;
    let t = seed_tenant(&shared, "moving2", TenantKind::Customer, Plan::Enterprise).await;
    let deaf = router_for(
        &shared,
        &shared.app_url,
        RouterSettings { listen: false, route_reread_interval: Duration::from_millis(250), ..router_settings() },
    );
    let scope = scope_of(&t);
    assert_eq!(current_db(&deaf, &scope).await.0, shared.name);
    let ded = make_dedicated(&shared, &t.tenant).await;
    // No NOTIFY reaches it; the stale route is still cached right now...
    assert!(deaf.cache().get(&t.tenant.id).is_some());
    wait_until(Duration::from_secs(3), || deaf.cache().get(&t.tenant.id).is_none()).await.expect("re-read invalidates");
    assert_eq!(current_db(&deaf, &scope).await.0, ded.name);
}

#[tokio::test]
async fn a_stale_instance_cannot_touch_the_old_home() {
    let shared = fresh_shared_db().await;
    let t = seed_tenant(&shared, "stale", TenantKind::Customer, Plan::Enterprise).await;
    let stale = router_for(
        &shared,
        &shared.app_url,
        RouterSettings { listen: false, route_reread_interval: Duration::from_secs(3600), ..router_settings() },
    );
    let scope = scope_of(&t);
    users::create(&stale, &SystemClock, &scope, &Email::parse("before@s.test").unwrap()).await.unwrap();
    let ded = make_dedicated(&shared, &t.tenant).await;
    // Its cache still says shared; the fence on shared refuses it, so it re-reads the route
    // and reads the new home (empty: the tenant was attached without its data).
    assert_eq!(stale.cache().get(&t.tenant.id).unwrap().strategy, authio_db::DbStrategy::Shared);
    assert!(users::list(&stale, &read_users(&scope), 10, None).await.unwrap().is_empty());
    assert_eq!(stale.cache().get(&t.tenant.id).unwrap().strategy, authio_db::DbStrategy::Dedicated);
    assert_eq!(current_db(&stale, &scope).await.0, ded.name);
    users::create(&stale, &SystemClock, &scope, &Email::parse("after@s.test").unwrap()).await.unwrap();
    assert_eq!(admin_query_strings(&shared.admin_url, "SELECT email FROM users").await, vec!["before@s.test"]);
    assert_eq!(admin_query_strings(&ded.admin_url, "SELECT email FROM users").await, vec!["after@s.test"]);

    let stale2 = router_for(
        &shared,
        &shared.app_url,
        RouterSettings { listen: false, route_reread_interval: Duration::from_secs(3600), ..router_settings() },
    );
    let t2 = seed_tenant(&shared, "stale-two", TenantKind::Customer, Plan::Enterprise).await;
    let scope2 = scope_of(&t2);
    assert!(users::list(&stale2, &read_users(&scope2), 1, None).await.unwrap().is_empty());
    let ded2 = make_dedicated(&shared, &t2.tenant).await;
    // A write through a stale route is refused by the fence too, and lands at the new home.
    users::create(&stale2, &SystemClock, &scope2, &Email::parse("w@s.test").unwrap()).await.unwrap();
    assert_eq!(admin_query_strings(&ded2.admin_url, "SELECT email FROM users").await, vec!["w@s.test"]);
    assert!(admin_query_strings(
        &shared.admin_url,
        &format!("SELECT email FROM users WHERE tenant_id = '{}'", t2.tenant.id)
    )
    .await
    .is_empty());
}

#[tokio::test]
async fn migrations_are_idempotent_and_the_app_role_is_locked_down() {
    let shared = fresh_shared_db().await;
    assert!(authio_db::migrate::migrate(&shared.admin_url).await.unwrap().is_empty());
    let rows = admin_query_strings(
        &shared.admin_url,
        "SELECT c.relname || ':' || c.relrowsecurity || ':' || c.relforcerowsecurity || ':' || pg_get_userbyid(c.relowner)
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> 'authio_schema_migrations' ORDER BY 1",
    )
    .await;
    assert!(!rows.is_empty());
    for r in rows {
        assert!(r.ends_with(":true:true:authio_owner"), "{r}");
    }
    let pk = admin_query_strings(
        &shared.admin_url,
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE i.indrelid = 'users'::regclass AND i.indisprimary",
    )
    .await;
    assert_eq!(pk, vec!["tenant_id"]);
}

#[tokio::test]
async fn pre_resolution_lookups_never_open_a_dedicated_pool() {
    let shared = fresh_shared_db().await;
    let t = seed_tenant(&shared, "pinned", TenantKind::Customer, Plan::Enterprise).await;
    make_dedicated(&shared, &t.tenant).await;
    let router = router_for(&shared, &shared.app_url, router_settings());
    let (key_id, _) = authio_core::project::api_keys::parse(&t.api_key.plaintext).unwrap();
    let rec = authio_db::preresolve::resolve_api_key(&router, key_id).await.unwrap().expect("key resolves");
    assert_eq!((rec.tenant_id, rec.project_id), (t.tenant.id, t.project.id));
    let route = authio_db::preresolve::tenant_route(&router, t.tenant.id).await.unwrap().unwrap();
    assert_eq!(route.strategy, authio_db::DbStrategy::Dedicated);
    assert_eq!(authio_db::preresolve::route_epochs(&router, &[t.tenant.id]).await.unwrap().len(), 1);
    assert!(authio_db::preresolve::dedicated_app_dsn(&router, t.tenant.id).await.unwrap().is_some());
    let scope = authio_core::project::api_keys::authenticate(&router, &t.api_key.plaintext).await.unwrap();
    assert_eq!(scope.tenant_id, t.tenant.id);
    assert_eq!(router.dedicated_pools_opened(), 0, "a pre-resolution lookup opened a dedicated pool");
    // The API key rows stay on shared, even for a dedicated tenant.
    let ded_keys = admin_query_strings(&shared.admin_url, "SELECT key_id FROM api_keys").await;
    assert_eq!(ded_keys, vec![key_id.to_owned()]);
    // authio_app cannot read the pinned tables wholesale: only through the lookup functions.
    let raw = authio_db::pool::connect(&shared.app_url, "test").await.unwrap();
    let n: i64 = raw.query_one("SELECT count(*) FROM api_keys", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
    let e = raw.query("SELECT * FROM dedicated_databases", &[]).await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42501"));
    let n: i64 = raw.query_one("SELECT count(*) FROM tenants", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn the_read_credential_caches_statements_and_survives_errors() {
    let shared = fresh_shared_db().await;
    let a = seed_tenant(&shared, "cached", TenantKind::Customer, Plan::Pro).await;
    let cfg = authio_db::pool::parse_url(&shared.app_url).unwrap();
    let mut conn = authio_db::pipeline::PgConn::connect_with(&cfg, "test", true).await.unwrap();
    let (t, p) = (a.tenant.id.to_string(), a.project.id.to_string());
    let bind = "SELECT set_config('authio.tenant_id', $1, true), set_config('authio.project_id', $2, true)";
    let count = "SELECT count(*) FROM users";
    for expected_err in [Some("22012"), Some("22012"), None, None] {
        let mut statements: Vec<(&str, &[authio_db::Param<'_>])> = Vec::new();
        let bind_params: [authio_db::Param<'_>; 2] = [(&t, Type::TEXT), (&p, Type::TEXT)];
        statements.push((bind, &bind_params));
        if expected_err.is_some() {
            statements.push(("SELECT 1/0", &[]));
        }
        statements.push((count, &[]));
        let r = conn.pipeline(&statements).await;
        match expected_err {
            Some(code) => assert_eq!(r.unwrap_err().sqlstate(), Some(code)),
            None => assert_eq!(r.unwrap()[0].try_get::<i64>(0).unwrap(), 0),
        }
    }
    // A statement that fails to parse is not remembered; the next good one still runs.
    assert_eq!(conn.pipeline(&[("SELEC nonsense", &[])]).await.unwrap_err().sqlstate(), Some("42601"));
    let v: i32 = conn.pipeline(&[("SELECT 41 + 1", &[])]).await.unwrap()[0].try_get(0).unwrap();
    assert_eq!(v, 42);
    // Prepared statements really are kept on the server connection.
    let names = conn
        .pipeline(&[("SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'authio_%'", &[])])
        .await
        .unwrap();
    assert!(names[0].try_get::<i64>(0).unwrap() >= 3);
}

#[tokio::test]
async fn dedicated_pools_are_bounded_per_node_least_recently_used_first() {
    let shared = fresh_shared_db().await;
    let mut tenants = Vec::new();
    for slug in ["ded-one", "ded-two", "ded-three"] {
        let t = seed_tenant(&shared, slug, TenantKind::Customer, Plan::Enterprise).await;
        let db = make_dedicated(&shared, &t.tenant).await;
        tenants.push((t, db));
    }
    let router = router_for(&shared, &shared.app_url, RouterSettings { max_dedicated_pools: 2, ..router_settings() });
    for (t, db) in &tenants {
        assert_eq!(current_db(&router, &scope_of(t)).await.0, db.name);
        assert!(router.open_dedicated_pools() <= 2, "bound exceeded");
    }
    assert_eq!(router.open_dedicated_pools(), 2);
    assert_eq!(router.dedicated_pools_opened(), 3);
    // The first tenant's pool was the least recently used and was closed; it reopens on demand.
    let (first, first_db) = &tenants[0];
    assert_eq!(current_db(&router, &scope_of(first)).await.0, first_db.name);
    assert_eq!(router.dedicated_pools_opened(), 4);
    assert_eq!(router.open_dedicated_pools(), 2);
    // Reads go through the same bounded pools.
    users::create(&router, &SystemClock, &scope_of(first), &Email::parse("x@one.test").unwrap()).await.unwrap();
    assert_eq!(users::list(&router, &read_users(&scope_of(first)), 10, None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_cut_listener_reconnects_and_forgets_what_it_may_have_missed() {
    let shared = fresh_shared_db().await;
    let t = seed_tenant(&shared, "relisten", TenantKind::Customer, Plan::Enterprise).await;
    let router = router_for(
        &shared,
        &shared.app_url,
        RouterSettings { route_reread_interval: Duration::from_secs(3600), ..router_settings() },
    );
    wait_until(Duration::from_secs(5), || router.listener_connected()).await.expect("listener up");
    let scope = scope_of(&t);
    current_db(&router, &scope).await;
    assert!(router.cache().get(&t.tenant.id).is_some());
    // Cut the LISTEN connection from the server side.
    let killed = admin_query_strings(
        &shared.admin_url,
        "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity WHERE application_name = 'authio-route-listener' AND datname = current_database()",
    )
    .await;
    assert_eq!(killed.len(), 1);
    // Nothing changed, but a NOTIFY sent while it was down would be lost: on reconnect the
    // whole cache is dropped.
    wait_until(Duration::from_secs(5), || router.cache().get(&t.tenant.id).is_none()).await.expect("cache dropped");
    wait_until(Duration::from_secs(5), || router.listener_connected()).await.expect("listener back");
    // And the new connection hears the next change.
    current_db(&router, &scope).await;
    assert!(router.cache().get(&t.tenant.id).is_some());
    let ded = make_dedicated(&shared, &t.tenant).await;
    wait_until(Duration::from_secs(1), || router.cache().get(&t.tenant.id).is_none())
        .await
        .expect("NOTIFY after reconnect");
    assert_eq!(current_db(&router, &scope).await.0, ded.name);
}

#[tokio::test]
async fn stores_take_time_from_the_clock_they_are_given() {
    let shared = fresh_shared_db().await;
    let t = seed_tenant(&shared, "clocked", TenantKind::Customer, Plan::Free).await;
    let router = router_for(&shared, &shared.app_url, router_settings());
    let at = chrono::DateTime::parse_from_rfc3339("2030-01-02T03:04:05Z").unwrap().with_timezone(&chrono::Utc);
    let clock = authio_core::FixedClock::new(at);
    let u = users::create(&router, &clock, &scope_of(&t), &Email::parse("c@clock.test").unwrap()).await.unwrap();
    assert_eq!((u.created_at, u.updated_at), (at, at));
    clock.advance(chrono::Duration::days(1));
    let v = users::create(&router, &clock, &scope_of(&t), &Email::parse("d@clock.test").unwrap()).await.unwrap();
    assert_eq!(v.created_at, at + chrono::Duration::days(1));
    let listed = users::list(&router, &read_users(&scope_of(&t)), 10, None).await.unwrap();
    assert_eq!(listed.iter().map(|u| u.created_at).collect::<Vec<_>>(), vec![at, at + chrono::Duration::days(1)]);
}

/// The tests act as the deployment itself (the CLI's principal) on the stores that need an
/// authorization.
fn read_users(scope: &Scope) -> authio_core::authz::Authorized {
    authio_core::authz::as_tool("test", authio_core::authz::Permission::UsersRead, scope).unwrap()
}

/// `start` returns only once the server accepts connections: straight after a crash (which
/// makes the next start run recovery, the window where PostgreSQL answers 57P03 "the database
/// system is starting up"), a connection made at once succeeds, every time.
#[tokio::test]
async fn local_cluster_start_waits_until_connections_are_accepted() {
    use authio_db::cluster::{free_port, ClusterOptions, LocalCluster};
    let dir = std::env::temp_dir().join(format!("authio-restart-{}", Uuid::new_v4().simple()));
    let port = free_port().unwrap();
    // Durable (fsync on), so what was committed before the crash is there to recover.
    let cluster = LocalCluster::init(&dir, port, &ClusterOptions { throwaway: false }).unwrap();
    cluster.start().unwrap();
    for round in 0..5 {
        // Leave work for recovery: a table written just before the crash.
        let c = authio_db::pool::connect(&cluster.admin_url("postgres"), "restart-test").await.unwrap();
        c.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS r (n int); INSERT INTO r SELECT generate_series(1, 20000); -- {round}"
        ))
        .await
        .unwrap();
        drop(c);
        cluster.kill();
        cluster.start().unwrap();
        let c = authio_db::pool::connect(&cluster.admin_url("postgres"), "restart-test")
            .await
            .unwrap_or_else(|e| panic!("round {round}: connecting right after start: {e}"));
        let n: i64 = c.query_one("SELECT count(*) FROM r", &[]).await.unwrap().get(0);
        assert!(n >= 20000, "round {round}: {n}");
    }
    cluster.stop();
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
