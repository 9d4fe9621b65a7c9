//! Prometheus metrics, kept small: request counts and latency by route and status, and the
//! router's own gauges. Text exposition format at `/metrics`.
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::AppState;

const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Default)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<HashMap<(String, String, u16), Series>>,
}

impl Metrics {
    fn observe(&self, method: &str, route: &str, status: u16, secs: f64) {
        if let Ok(mut m) = self.requests.lock() {
            let s = m.entry((method.to_owned(), route.to_owned(), status)).or_default();
            s.count += 1;
            s.sum += secs;
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    s.buckets[i] += 1;
                }
            }
        }
    }

    pub fn render(&self, state: &AppState) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP authio_http_requests_total HTTP requests by method, route and status.");
        let _ = writeln!(out, "# TYPE authio_http_requests_total counter");
        let mut hist = String::new();
        let _ = writeln!(hist, "# HELP authio_http_request_duration_seconds Request latency.");
        let _ = writeln!(hist, "# TYPE authio_http_request_duration_seconds histogram");
        if let Ok(m) = self.requests.lock() {
            let mut keys: Vec<_> = m.keys().collect();
            keys.sort();
            for k in keys {
                let Some(s) = m.get(k) else { continue };
                let (method, route, status) = k;
                let labels = format!("method=\"{method}\",route=\"{}\",status=\"{status}\"", escape(route));
                let _ = writeln!(out, "authio_http_requests_total{{{labels}}} {}", s.count);
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        hist,
                        "authio_http_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                        s.buckets[i]
                    );
                }
                let _ =
                    writeln!(hist, "authio_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", s.count);
                let _ = writeln!(hist, "authio_http_request_duration_seconds_sum{{{labels}}} {}", s.sum);
                let _ = writeln!(hist, "authio_http_request_duration_seconds_count{{{labels}}} {}", s.count);
            }
        }
        out.push_str(&hist);
        let r = &state.router;
        for (name, help, kind, value) in [
            (
                "authio_router_dedicated_pools_open",
                "Dedicated pools open on this node.",
                "gauge",
                r.open_dedicated_pools() as f64,
            ),
            (
                "authio_router_dedicated_pools_opened_total",
                "Dedicated pools ever opened.",
                "counter",
                r.dedicated_pools_opened() as f64,
            ),
            ("authio_router_route_cache_entries", "Tenants in the route cache.", "gauge", r.cache().len() as f64),
            (
                "authio_router_route_invalidations_total",
                "Route cache entries invalidated.",
                "counter",
                r.cache().invalidations() as f64,
            ),
            (
                "authio_router_platform_refusals_total",
                "Platform tenant rows saying dedicated, refused.",
                "counter",
                r.platform_refusals() as f64,
            ),
            (
                "authio_router_listener_connected",
                "1 while the route NOTIFY listener is connected.",
                "gauge",
                if r.listener_connected() { 1.0 } else { 0.0 },
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    state.metrics.observe(&method, &route, resp.status().as_u16(), started.elapsed().as_secs_f64());
    resp
}
