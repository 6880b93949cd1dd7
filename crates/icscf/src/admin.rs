//! The I-CSCF's small admin HTTP API (axum), served when `admin_listen` is set.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | /health | liveness and our SIP address |
//! | GET | /metrics | Prometheus metrics ([`crate::metrics`]) |
//!
//! Read-only. It has no authentication, so [`crate::Config::validate`] refuses an
//! `admin_listen` that is not a loopback address (as the S-CSCF's).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use crate::Inner;

/// The admin API's routes over the I-CSCF's state.
pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(inner)
}

async fn health(State(s): State<Arc<Inner>>) -> Json<Value> {
    Json(
        json!({ "status": "ok", "sip": s.ep.local_addr().to_string(), "via_host": s.cfg.via_host }),
    )
}

async fn metrics(State(s): State<Arc<Inner>>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(s.ep.transactions()),
    )
}
