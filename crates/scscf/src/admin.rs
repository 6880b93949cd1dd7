//! The S-CSCF's small admin HTTP API (axum), served when `admin_listen` is set: what this
//! S-CSCF holds, for people and for `imsctl registrations` (the HSS knows who is registered
//! where; only the S-CSCF knows the contacts, until when, and through which P-CSCF).
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | /health | liveness and our name |
//! | GET | /v1/registrations | every registration held: IMPU, IMPI, implicit set, contacts with their expiry, Path and P-CSCF |
//! | GET | /metrics | Prometheus metrics ([`crate::metrics`]) |
//!
//! Read-only, from the registrar's memory (a snapshot, shard by shard); nothing here changes
//! a registration. It has no authentication, so [`crate::Config::validate`] refuses an
//! `admin_listen` that is not a loopback address (issue #20: the HSS's admin API needs a
//! token beyond loopback; this one shows users' contact addresses).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use ims_sip::{NameAddr, Uri, text};
use ims_store::RegistrationRecord;
use serde_json::{Value, json};

use ims_net::endpoint::SipEndpoint;

use crate::registrar::Registrar;

/// What the admin API reads.
#[derive(Clone)]
struct Seen {
    registrar: Registrar,
    ep: SipEndpoint,
}

/// The admin API's routes over `registrar` and the SIP endpoint `ep`.
pub fn router(registrar: Registrar, ep: SipEndpoint) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/registrations", get(registrations))
        .route("/metrics", get(metrics))
        .with_state(Seen { registrar, ep })
}

async fn health(State(s): State<Seen>) -> Json<Value> {
    Json(json!({ "status": "ok", "name": s.registrar.config().name }))
}

async fn metrics(State(s): State<Seen>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.registrar.render_metrics(s.ep.transactions()),
    )
}

async fn registrations(State(Seen { registrar: r, .. }): State<Seen>) -> Json<Value> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let regs: Vec<Value> = r
        .registrations()
        .iter()
        .map(|rec| registration_json(rec, now))
        .collect();
    Json(json!({ "scscf": r.config().name, "registrations": regs }))
}

fn registration_json(rec: &RegistrationRecord, now_ms: i64) -> Value {
    let contacts: Vec<Value> = rec
        .bindings
        .iter()
        .map(|b| {
            json!({
                "contact": b.contact_uri,
                "until": ims_net::clock::rfc3339_ms(b.expires_at),
                "expires_in": ((b.expires_at - now_ms).max(0) + 999) / 1000,
                "path": b.path,
                "pcscf": pcscf_of(&b.path),
            })
        })
        .collect();
    let until = rec.bindings.iter().map(|b| b.expires_at).max();
    json!({
        "impu": rec.impu,
        "impi": rec.impi,
        "associated_uris": rec.associated_uris,
        "until": until.map(ims_net::clock::rfc3339_ms),
        "contacts": contacts,
    })
}

/// The P-CSCF of a binding: `host[:port]` of the Path entry nearest the UE (the last one:
/// each proxy puts its own on top, and the P-CSCF is the first proxy).
pub fn pcscf_of(path: &[String]) -> Option<String> {
    let last = path.iter().flat_map(|v| text::split_commas(v)).last()?;
    match NameAddr::parse(last).ok()?.uri {
        Uri::Sip(u) => Some(u.host_port_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pcscf_is_the_path_entry_nearest_the_ue() {
        let p = |v: &[&str]| pcscf_of(&v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(
            p(&["<sip:term@pcscf1.vims.net;lr>"]).as_deref(),
            Some("pcscf1.vims.net")
        );
        assert_eq!(
            p(&["<sip:x@proxy.hims.net;lr>, <sip:term@10.0.0.2:5062;lr>"]).as_deref(),
            Some("10.0.0.2:5062")
        );
        assert_eq!(
            p(&["<sip:a@one;lr>", "<sip:term@[fd00::2]:5060;lr>"]).as_deref(),
            Some("[fd00::2]:5060")
        );
        assert_eq!(p(&[]), None);
        assert_eq!(p(&["not a uri <"]), None);
        assert_eq!(p(&["<tel:+123>"]), None);
    }
}
