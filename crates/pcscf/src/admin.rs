//! The P-CSCF's small admin HTTP API (axum), served when `admin_listen` is set.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | /health | liveness and our SIP address |
//! | GET | /v1/registrations | every UE registered here: its flow, IMPI, contacts with their expiry, P-Associated-URI, Service-Route, IPsec port, and whether its flow was lost in a restart |
//! | GET | /metrics | Prometheus metrics ([`crate::metrics`]) |
//!
//! Read-only, from memory. It has no authentication, so [`crate::Config::validate`] refuses
//! an `admin_listen` that is not a loopback address (as the S-CSCF's: this one shows users'
//! addresses too).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use crate::Inner;

/// The admin API's routes over the P-CSCF's state.
pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/registrations", get(registrations))
        .route("/metrics", get(metrics))
        .with_state(inner)
}

async fn health(State(s): State<Arc<Inner>>) -> Json<Value> {
    Json(
        json!({ "status": "ok", "sip": s.ep.local_addr().to_string(), "via_host": s.cfg.via_host }),
    )
}

async fn registrations(State(s): State<Arc<Inner>>) -> Json<Value> {
    let now = std::time::Instant::now();
    let clock = crate::persist::Clock::now();
    let mut regs = s.regs.all();
    regs.retain(|r| r.expires().is_some_and(|e| e > now));
    regs.sort_by_key(|r| {
        (
            r.flow.addr,
            crate::persist::flow_key(&r.flow).transport.as_str(),
        )
    });
    let regs: Vec<Value> = regs
        .iter()
        .map(|r| {
            let rec = clock.record(r);
            let contacts: Vec<Value> = r
                .contacts
                .iter()
                .zip(&rec.contacts)
                .map(|((uri, at), c)| {
                    json!({
                        "contact": uri,
                        "until": ims_net::clock::rfc3339_ms(c.expires_at),
                        "expires_in": at.saturating_duration_since(now).as_secs(),
                    })
                })
                .collect();
            json!({
                "flow": {
                    "transport": rec.flow.transport.as_str(),
                    "addr": r.flow.addr.to_string(),
                },
                "impi": r.impi,
                "associated_uris": r.associated,
                "service_route": r.service_route,
                "ipsec_port_us": r.ipsec_port_us,
                "flow_lost": r.flow_lost,
                "until": ims_net::clock::rfc3339_ms(rec.expires_at()),
                "contacts": contacts,
            })
        })
        .collect();
    Json(json!({ "pcscf": s.cfg.via_host, "registrations": regs }))
}

async fn metrics(State(s): State<Arc<Inner>>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(
            s.regs.len(),
            s.ipsec.as_ref().map_or(0, |f| f.len()),
            s.ep.transactions(),
        ),
    )
}
