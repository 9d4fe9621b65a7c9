//! The event stream's cost on the sign-in path: the sign-in's database write (the session, its
//! first refresh token and its audit event, one pipeline) with the customer events the audit
//! event stands for (`session.created`, `authentication.succeeded`, written by the database in
//! the same transaction) and without (the emitting trigger disabled), rounds alternating; then
//! the password sign-in endpoint itself, both ways.
use std::time::{Duration, Instant};

use anyhow::Result;
use authio_core::identity::sessions::{NewSession, SessionPolicy, START_SQL};
use authio_core::types::ClientInfo;
use authio_core::SystemClock;
use authio_db::{Router, Scope, TenantKind};
use uuid::Uuid;

use crate::{env_num, identity_app, median, wrk, Env, Target};

async fn set_emitting(admin_url: &str, on: bool) -> Result<()> {
    let c = authio_db::pool::connect(admin_url, "bench").await?;
    let verb = if on { "ENABLE" } else { "DISABLE" };
    c.batch_execute(&format!("ALTER TABLE audit_events {verb} TRIGGER audit_events_emit")).await?;
    Ok(())
}

async fn writes(router: &Router, scope: Scope, user: Uuid, secs: u64) -> Result<f64> {
    let policy = SessionPolicy {
        idle: chrono::Duration::days(1),
        absolute: chrono::Duration::days(2),
        grace: chrono::Duration::seconds(10),
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let router = router.clone();
        tasks.push(tokio::spawn(async move {
            let client = ClientInfo::default();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let now = chrono::Utc::now();
                let session = NewSession::new(&scope, user, &["pwd"], &client, &policy, now)?;
                let session_params = session.params();
                let event = authio_core::audit::EventRow::new(
                    &scope,
                    authio_core::audit::Event {
                        action: authio_core::audit::AuditAction::UserSignedIn,
                        actor: authio_core::audit::Actor::user(user, Some("events-bench@bench.test")),
                        target: Some(("user", user.to_string())),
                        client: &client,
                        metadata: serde_json::json!({"session_id": session.id, "amr": ["pwd"]}),
                    },
                    now,
                )?;
                let event_params = event.params();
                router
                    .write(
                        &scope,
                        &[(START_SQL, &session_params[..]), (authio_core::audit::INSERT_SQL, &event_params[..])],
                    )
                    .await?;
                n += 1;
            }
            Ok::<u64, anyhow::Error>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / secs as f64)
}

pub async fn events(env: &Env, secs: u64, rounds: usize) -> Result<()> {
    let admin = env.shared.admin_url.clone();
    let scope = Scope::project(env.a.tenant.id, env.a.project.id, TenantKind::Customer);
    let user = authio_core::identity::users::create(
        &env.router,
        &SystemClock,
        &scope,
        &authio_core::types::Email::parse("events-bench@bench.test")?,
    )
    .await?
    .id;
    let (mut with, mut without) = (vec![], vec![]);
    for round in 0..rounds {
        for emitting in [round % 2 == 0, round % 2 != 0] {
            set_emitting(&admin, emitting).await?;
            let r = writes(&env.router, scope, user, secs).await?;
            if emitting {
                with.push(r)
            } else {
                without.push(r)
            }
        }
    }
    set_emitting(&admin, true).await?;
    let (mw, mo) = (median(with.clone()), median(without.clone()));
    let per_round: Vec<f64> = without.iter().zip(&with).map(|(o, w)| w / o).collect();
    println!("\n## A sign-in's database write with and without its events (32 writers, one pipeline each)\n");
    println!("| side | median writes/s | runs |\n|---|---:|---|");
    println!(
        "| session + refresh token + audit event, no events | {mo:.0} | {:?} |",
        without.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    println!(
        "| the same + `session.created` and `authentication.succeeded` | {mw:.0} | {:?} |",
        with.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    println!("\nratio with / without: {:.3} (median of per-round ratios {:.3})", mw / mo, median(per_round));

    // The whole endpoint (Argon2id dominates it).
    let (base, state) = identity_app(env, true).await?;
    let password = "correct horse battery";
    state.identity.sign_up(env.a.project.id, "events-signin@bench.test", password, &Default::default(), None).await?;
    let body =
        serde_json::json!({"project_id": env.a.project.id, "email": "events-signin@bench.test", "password": password})
            .to_string();
    let target = Target::post("sign-in", &format!("{base}/v1/auth/signin"), "application/json", &body, vec![]);
    let conns = env_num("BENCH_SIGNIN_CONNECTIONS", 32) as u32;
    tokio::task::block_in_place(|| wrk(&target, 1, conns))?;
    let (mut hw, mut ho) = (vec![], vec![]);
    for round in 0..rounds {
        for emitting in [round % 2 == 0, round % 2 != 0] {
            set_emitting(&admin, emitting).await?;
            let r = tokio::task::block_in_place(|| wrk(&target, secs, conns))?;
            anyhow::ensure!(r.non2xx == 0, "sign-in failed {} times", r.non2xx);
            if emitting {
                hw.push(r.rps)
            } else {
                ho.push(r.rps)
            }
        }
    }
    set_emitting(&admin, true).await?;
    let (mw, mo) = (median(hw.clone()), median(ho.clone()));
    println!("\n## POST /v1/auth/signin with and without its events ({conns} connections)\n");
    println!("| side | median req/s | runs |\n|---|---:|---|");
    println!("| no events | {mo:.1} | {:?} |", ho.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>());
    println!("| events | {mw:.1} | {:?} |", hw.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>());
    println!("\nratio with / without: {:.3}", mw / mo);
    Ok(())
}
