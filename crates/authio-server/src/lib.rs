//! The Authio HTTP application: scope middleware, the `/v1` API, health, metrics, OpenAPI.
//!
//! Handlers are thin: parse and authorise, call `authio-core`, map the result. Status codes
//! are chosen in one place, [`error::ApiError`].
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod context;
pub mod error;
mod extract;
pub mod metrics;
mod openapi;
mod routes;

use std::sync::Arc;

use authio_core::Clock;
use authio_db::Router;
use axum::http::{HeaderName, Request};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use context::{db_pool_from_context, RequestContext};
pub use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub router: Router,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<metrics::Metrics>,
}

impl AppState {
    pub fn new(router: Router, clock: Arc<dyn Clock>) -> Self {
        AppState { router, clock, metrics: Arc::new(metrics::Metrics::default()) }
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole application, ready to serve.
pub fn build_app(state: AppState) -> axum::Router {
    let trace = TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
        let request_id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
        tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %request_id)
    });
    routes::router(state.clone())
        .layer(axum::middleware::from_fn_with_state(state, metrics::track))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(trace)
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// Serve until `shutdown` resolves, letting in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown);
    server.await
}
