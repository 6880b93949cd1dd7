//! The DNS server's counters and its small admin HTTP API (axum), served when
//! `admin_listen` is set (loopback only: it has no authentication, as the CSCFs' ones).
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | /health | liveness and the DNS addresses |
//! | GET | /metrics | Prometheus: `ims_dns_queries_total{type,rcode}` |
//!
//! [`Counted`] wraps hickory-server's [`Catalog`] as the server's request handler and counts
//! each answer by query type (the CSCFs' A, AAAA, SRV and NAPTR; anything else as `other`)
//! and response code (NOERROR, NXDOMAIN, REFUSED, SERVFAIL, `other`): a fixed table of
//! atomics, no lock and no allocation per query.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::RecordType;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::Catalog;

const TYPES: [&str; 5] = ["A", "AAAA", "SRV", "NAPTR", "other"];
const CODES: [&str; 5] = ["NOERROR", "NXDOMAIN", "REFUSED", "SERVFAIL", "other"];

/// Answers by query type and response code.
pub(crate) struct Metrics {
    answers: [[AtomicU64; CODES.len()]; TYPES.len()],
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Metrics {
            answers: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }

    fn answered(&self, qtype: Option<RecordType>, rcode: ResponseCode) {
        let t = match qtype {
            Some(RecordType::A) => 0,
            Some(RecordType::AAAA) => 1,
            Some(RecordType::SRV) => 2,
            Some(RecordType::NAPTR) => 3,
            _ => 4,
        };
        let c = match rcode {
            ResponseCode::NoError => 0,
            ResponseCode::NXDomain => 1,
            ResponseCode::Refused => 2,
            ResponseCode::ServFail => 3,
            _ => 4,
        };
        self.answers[t][c].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text of every series (zeros included, so that a rate has a start).
    pub(crate) fn render(&self) -> String {
        let mut out = String::from(
            "# HELP ims_dns_queries_total DNS queries answered, by query type and response code.\n\
             # TYPE ims_dns_queries_total counter\n",
        );
        for (t, row) in TYPES.iter().zip(&self.answers) {
            for (c, n) in CODES.iter().zip(row) {
                out.push_str(&format!(
                    "ims_dns_queries_total{{type=\"{t}\",rcode=\"{c}\"}} {}\n",
                    n.load(Ordering::Relaxed)
                ));
            }
        }
        out
    }
}

/// The catalog, each answer counted.
pub(crate) struct Counted {
    pub(crate) catalog: Catalog,
    pub(crate) metrics: Arc<Metrics>,
}

// hickory-server's trait is declared with async-trait, so its implementations are too.
#[async_trait::async_trait]
impl RequestHandler for Counted {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let qtype = request.request_info().ok().map(|i| i.query.query_type());
        let info = self
            .catalog
            .handle_request::<R, T>(request, response_handle)
            .await;
        self.metrics.answered(qtype, info.response_code);
        info
    }
}

struct Admin {
    metrics: Arc<Metrics>,
    dns: Vec<SocketAddr>,
}

/// The admin API's routes.
pub(crate) fn router(metrics: Arc<Metrics>, dns: Vec<SocketAddr>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(render))
        .with_state(Arc::new(Admin { metrics, dns }))
}

async fn health(State(s): State<Arc<Admin>>) -> axum::Json<serde_json::Value> {
    let dns: Vec<String> = s.dns.iter().map(ToString::to_string).collect();
    axum::Json(serde_json::json!({ "status": "ok", "dns": dns }))
}

async fn render(State(s): State<Arc<Admin>>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(),
    )
}
