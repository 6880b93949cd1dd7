//! The HSS's JSON admin API (axum), documented by `openapi.json` served at `/openapi.json`.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | /health | liveness and the database backend |
//! | GET | /openapi.json | this API's OpenAPI 3 document |
//! | GET | /v1/subscribers?offset=&limit= | private identities, in order |
//! | POST | /v1/subscribers | provision one subscriber (JSON) |
//! | POST | /v1/subscribers/import | bulk provisioning from CSV (text/csv) |
//! | GET | /v1/subscribers/{impi} | one subscriber, never its secrets, with its last authentication |
//! | DELETE | /v1/subscribers/{impi} | remove the subscription with everything in it |
//! | POST | /v1/subscribers/{impi}/deregister | RTR to the serving S-CSCF (administrative deregistration) |
//! | POST | /v1/subscribers/{impi}/push-profile | PPR with the current User-Data to the serving S-CSCF |
//! | GET | /v1/registrations?offset=&limit= | registered public identities with their IMPI and S-CSCF |
//! | PUT | /v1/capability-sets/{name} | create or replace an S-CSCF capability set |
//! | GET | /metrics | Prometheus metrics (Cx requests, latency, resyncs, peers up) |
//!
//! With a token configured (`admin_token`, required beyond loopback) every path but
//! `/health` and `/openapi.json` needs `Authorization: Bearer <token>`; anything else gets 401
//! with `WWW-Authenticate: Bearer` (RFC 6750). The token is compared in constant time.
//!
//! Bad input gets a 4xx whose JSON body names the field: `{"error": "...", "field": "k"}`.
//! Secrets are transformed (by ims-aka) before they are stored: an OP becomes
//! OPc = AES_K(OP) xor OP, a digest password becomes HA1 = MD5(impi ":" realm ":" password);
//! neither the OP nor the
//! password is kept, and no response or log line carries K, OPc or HA1.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use ims_aka::Ha1;
use ims_aka::secret::{Key, Op};
use ims_store::{
    CapabilitySet, Credentials, NewPublicIdentity, NewSubscriber, SQN_MODULUS, Store, StoreError,
};
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Rows per transaction in a CSV import.
const IMPORT_BATCH: usize = 1000;

/// An API error: status, message, and the offending field when there is one.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    field: Option<String>,
    message: String,
}

impl ApiError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.message, "field": self.field })),
        )
            .into_response()
    }
}

impl From<crate::subscribers::Error> for ApiError {
    fn from(e: crate::subscribers::Error) -> Self {
        match e {
            crate::subscribers::Error::Store(e) => e.into(),
            e => {
                tracing::error!(error = %e, "admin API: subscriber failure");
                Self {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    field: None,
                    message: e.to_string(),
                }
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (status, field) = match &e {
            StoreError::Duplicate { what, .. } => (StatusCode::CONFLICT, Some((*what).to_owned())),
            StoreError::NotFound { what, .. } => (StatusCode::NOT_FOUND, Some((*what).to_owned())),
            StoreError::Invalid { field, .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, Some((*field).to_owned()))
            }
            _ => {
                tracing::error!(error = %e, "admin API: store failure");
                (StatusCode::INTERNAL_SERVER_ERROR, None)
            }
        };
        Self {
            status,
            field,
            message: e.to_string(),
        }
    }
}

/// One public identity in a request: a bare URI, or with options.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ImpuReq {
    Uri(String),
    Full {
        impu: String,
        #[serde(default)]
        barred: bool,
        #[serde(default = "one")]
        irs: i64,
    },
}

fn one() -> i64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AkaReq {
    k: String,
    op: Option<String>,
    opc: Option<String>,
    #[serde(default = "default_amf")]
    amf: String,
    #[serde(default)]
    sqn: u64,
}

fn default_amf() -> String {
    "8000".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DigestReq {
    realm: String,
    password: Option<String>,
    ha1: Option<String>,
}

/// The body of POST /v1/subscribers (and one CSV row, after mapping).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriberReq {
    impi: String,
    name: Option<String>,
    impus: Vec<ImpuReq>,
    aka: Option<AkaReq>,
    digest: Option<DigestReq>,
    #[serde(default)]
    ifc_xml: String,
    capability_set: Option<String>,
    #[serde(default)]
    roaming_allowed: Vec<String>,
}

fn hex_bytes(field: &str, s: &str, len: usize) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let v = hex::decode(s.trim()).map_err(|_| {
        ApiError::invalid(field, format!("{field}: expected {} hex digits", len * 2))
    })?;
    if v.len() != len {
        return Err(ApiError::invalid(
            field,
            format!(
                "{field}: expected {} hex digits, got {}",
                len * 2,
                s.trim().len()
            ),
        ));
    }
    Ok(Zeroizing::new(v))
}

/// OPc = AES-128_K(OP) xor OP (TS 35.206 §4.1), by ims-aka's Milenage.
fn opc_from_op(k: &[u8], op: &[u8]) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let k = Key::from_slice(k).map_err(|e| ApiError::invalid("k", format!("k: {e}")))?;
    let op = Op::from_slice(op).map_err(|e| ApiError::invalid("op", format!("op: {e}")))?;
    Ok(Zeroizing::new(
        ims_aka::milenage::compute_opc(&k, &op).expose().to_vec(),
    ))
}

impl SubscriberReq {
    fn into_new(self) -> Result<NewSubscriber, ApiError> {
        if self.impi.trim().is_empty() || self.impi.contains(char::is_whitespace) {
            return Err(ApiError::invalid(
                "impi",
                "impi: a private identity such as user@realm",
            ));
        }
        if self.impus.is_empty() {
            return Err(ApiError::invalid(
                "impus",
                "impus: at least one public identity",
            ));
        }
        let mut public_identities = Vec::with_capacity(self.impus.len());
        for i in self.impus {
            let (impu, barred, irs) = match i {
                ImpuReq::Uri(u) => (u, false, 1),
                ImpuReq::Full { impu, barred, irs } => (impu, barred, irs),
            };
            let lower = impu.to_ascii_lowercase();
            if !(lower.starts_with("sip:")
                || lower.starts_with("sips:")
                || lower.starts_with("tel:"))
            {
                return Err(ApiError::invalid(
                    "impus",
                    format!("impus: `{impu}` is not a sip:, sips: or tel: URI"),
                ));
            }
            public_identities.push(NewPublicIdentity { impu, barred, irs });
        }
        let credentials = match (self.aka, self.digest) {
            (Some(a), None) => {
                let k = hex_bytes("k", &a.k, 16)?;
                let opc = match (a.op, a.opc) {
                    (Some(op), None) => opc_from_op(&k, &hex_bytes("op", &op, 16)?)?,
                    (None, Some(opc)) => hex_bytes("opc", &opc, 16)?,
                    _ => {
                        return Err(ApiError::invalid(
                            "op",
                            "aka: give exactly one of op and opc",
                        ));
                    }
                };
                let amf = hex_bytes("amf", &a.amf, 2)?;
                if a.sqn >= SQN_MODULUS {
                    return Err(ApiError::invalid("sqn", "sqn: a 48-bit value"));
                }
                Credentials::Aka {
                    k,
                    opc,
                    amf: [amf[0], amf[1]],
                    sqn: a.sqn,
                }
            }
            (None, Some(d)) => {
                let ha1 = match (d.password, d.ha1) {
                    (Some(p), None) => Ha1::compute(&self.impi, &d.realm, p.as_bytes()).to_hex(),
                    (None, Some(ha1)) => {
                        hex_bytes("ha1", &ha1, 16)?;
                        Zeroizing::new(ha1.trim().to_ascii_lowercase())
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            "password",
                            "digest: give exactly one of password and ha1",
                        ));
                    }
                };
                Credentials::Digest {
                    realm: d.realm,
                    ha1,
                }
            }
            _ => {
                return Err(ApiError::invalid(
                    "aka",
                    "give exactly one of aka and digest",
                ));
            }
        };
        Ok(NewSubscriber {
            name: self.name.unwrap_or_else(|| self.impi.clone()),
            impi: self.impi,
            credentials,
            public_identities,
            ifc_xml: self.ifc_xml,
            capability_set: self.capability_set,
            roaming_allowed: self.roaming_allowed,
        })
    }
}

/// Deserializes a JSON body ourselves, so that the 422 names the field serde complains about.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        let field = msg
            .split('`')
            .nth(1)
            .map(str::to_owned)
            .unwrap_or_else(|| "body".to_owned());
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            field: Some(field),
            message: format!("invalid JSON body: {msg}"),
        }
    })
}

/// What the admin API's handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The subscriber store.
    pub store: Store,
    /// The subscribers in memory (Cx answers from them): told of every change made here.
    pub subs: std::sync::Arc<crate::subscribers::Subscribers>,
    /// The Diameter side, to send RTR and PPR to the serving S-CSCF.
    pub diameter: crate::server::Diameter,
    /// Prometheus metrics.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Our Origin-Host (RTR/PPR).
    pub origin_host: String,
    /// Our Origin-Realm.
    pub origin_realm: String,
    /// The bearer token required on every path but `/health` and `/openapi.json`.
    pub token: Option<std::sync::Arc<str>>,
}

impl axum::extract::FromRef<AppState> for Store {
    fn from_ref(s: &AppState) -> Store {
        s.store.clone()
    }
}

/// The admin API's routes.
pub fn router(state: AppState) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/subscribers", get(list).post(create))
        .route("/v1/subscribers/import", post(import_csv))
        .route("/v1/subscribers/{impi}", get(show).delete(remove))
        .route("/v1/subscribers/{impi}/deregister", post(deregister))
        .route("/v1/subscribers/{impi}/push-profile", post(push_profile))
        .route("/v1/registrations", get(registrations))
        .route("/v1/capability-sets/{name}", put(put_caps))
        .route_layer(axum::middleware::from_fn_with_state(
            state.token.clone(),
            require_token,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .merge(guarded)
        .with_state(state)
}

/// Lets a request through when no token is configured or it carries the token as a bearer
/// credential; otherwise 401 (RFC 6750 §3).
async fn require_token(
    State(token): State<Option<std::sync::Arc<str>>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = token else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        return next.run(req).await;
    }
    let message = if given.is_some() {
        "wrong admin token"
    } else {
        "the admin API needs a token: Authorization: Bearer <admin_token> (imsctl: IMS_HSS_TOKEN)"
    };
    tracing::warn!(path = %req.uri().path(), "admin API: {message}");
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"ims-hss\"")],
        Json(json!({ "error": message, "field": null })),
    )
        .into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    let mut text = s.metrics.render();
    text.push_str(
        "# HELP ims_hss_subscriptions_loaded Subscriptions held in memory (Cx answers from them).\n\
         # TYPE ims_hss_subscriptions_loaded gauge\n",
    );
    text.push_str(&format!(
        "ims_hss_subscriptions_loaded {}\n",
        s.subs.loaded()
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The serving S-CSCF's Diameter host and the subscriber's public identities.
async fn serving(s: &AppState, impi: &str) -> Result<(String, Vec<String>), ApiError> {
    let view = s.store.subscriber(impi).await?.ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        field: Some("impi".into()),
        message: format!("private identity `{impi}` not found"),
    })?;
    let host = view
        .scscf
        .and_then(|a| a.diameter_host)
        .ok_or_else(|| ApiError {
            status: StatusCode::CONFLICT,
            field: Some("impi".into()),
            message: format!("`{impi}` has no serving S-CSCF"),
        })?;
    Ok((
        host,
        view.public_identities.into_iter().map(|p| p.impu).collect(),
    ))
}

fn diameter_error(e: crate::server::SendError) -> ApiError {
    ApiError {
        status: StatusCode::BAD_GATEWAY,
        field: None,
        message: e.to_string(),
    }
}

fn answer_result(bytes: &[u8]) -> Option<u32> {
    let m = ims_diameter::Message::parse(bytes).ok()?;
    let rc = m.find(&ims_diameter::dict::RESULT_CODE).ok().flatten();
    if let Some(a) = rc {
        return a.as_u32().ok();
    }
    let er = m
        .find(&ims_diameter::dict::EXPERIMENTAL_RESULT)
        .ok()
        .flatten()?;
    er.grouped()
        .flatten()
        .find(|c| c.is(&ims_diameter::dict::EXPERIMENTAL_RESULT_CODE))
        .and_then(|c| c.as_u32().ok())
}

/// Encodes a request with `encode` and sends it to `host`, returning the answer's result code.
async fn ask_scscf(
    s: &AppState,
    host: &str,
    encode: impl FnOnce(&mut Vec<u8>) -> Result<usize, ims_diameter::Error>,
) -> Result<u32, ApiError> {
    let mut req = Vec::new();
    encode(&mut req).map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        field: None,
        message: e.to_string(),
    })?;
    let ans = s
        .diameter
        .request(host, req)
        .await
        .map_err(diameter_error)?;
    Ok(answer_result(&ans).unwrap_or(0))
}

/// RTR (administrative deregistration, TS 29.228 §6.1.3) to the serving S-CSCF; on its
/// success the HSS forgets the S-CSCF and marks the identities not registered.
async fn deregister(
    State(s): State<AppState>,
    Path(impi): Path<String>,
) -> Result<Json<Value>, ApiError> {
    use ims_diameter::cx::{DeregistrationReason, RequestBase, Rtr};
    let (host, impus) = serving(&s, &impi).await?;
    let realm = s
        .diameter
        .peer_realm(&host)
        .unwrap_or_else(|| s.origin_realm.clone());
    let sid = ims_diameter::SessionIdGenerator::new(s.origin_host.clone(), 1).next_id();
    let rtr = Rtr {
        base: RequestBase {
            session_id: &sid,
            origin_host: &s.origin_host,
            origin_realm: &s.origin_realm,
            destination_host: Some(&host),
            destination_realm: &realm,
            ..RequestBase::default()
        },
        user_name: &impi,
        public_identities: impus.iter().map(String::as_str).collect(),
        deregistration_reason: DeregistrationReason {
            reason_code: ims_diameter::dict::ReasonCode::PermanentTermination,
            reason_info: Some("administrative deregistration"),
        },
    };
    let result = ask_scscf(&s, &host, |b| rtr.encode(b)).await?;
    if result == ims_diameter::dict::result_code::SUCCESS
        && let Some(first) = impus.first()
    {
        s.subs
            .set_reg_state(first, ims_store::RegState::NotRegistered)
            .await?;
        s.subs.set_scscf(first, None).await?;
    }
    Ok(Json(json!({ "scscf": host, "result_code": result })))
}

/// PPR (push profile, TS 29.228 §6.2.2) with the current User-Data to the serving S-CSCF.
async fn push_profile(
    State(s): State<AppState>,
    Path(impi): Path<String>,
) -> Result<Json<Value>, ApiError> {
    use ims_diameter::cx::{Ppr, RequestBase};
    let (host, _) = serving(&s, &impi).await?;
    let profile = s.store.profile(&impi).await?.ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        field: Some("impi".into()),
        message: format!("private identity `{impi}` has no profile"),
    })?;
    let xml = crate::cx::user_data_xml(&profile);
    let realm = s
        .diameter
        .peer_realm(&host)
        .unwrap_or_else(|| s.origin_realm.clone());
    let sid = ims_diameter::SessionIdGenerator::new(s.origin_host.clone(), 2).next_id();
    let ppr = Ppr {
        base: RequestBase {
            session_id: &sid,
            origin_host: &s.origin_host,
            origin_realm: &s.origin_realm,
            destination_host: Some(&host),
            destination_realm: &realm,
            ..RequestBase::default()
        },
        user_name: &impi,
        user_data: Some(xml.as_bytes()),
        auth_data_item: None,
    };
    let result = ask_scscf(&s, &host, |b| ppr.encode(b)).await?;
    Ok(Json(json!({ "scscf": host, "result_code": result })))
}

async fn health(State(store): State<Store>) -> Json<Value> {
    Json(json!({ "status": "ok", "database": format!("{:?}", store.backend()).to_lowercase() }))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[derive(Debug, Deserialize)]
struct Page {
    #[serde(default)]
    offset: i64,
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    100
}

async fn list(State(store): State<Store>, Query(p): Query<Page>) -> Result<Json<Value>, ApiError> {
    if p.offset < 0 || !(1..=10_000).contains(&p.limit) {
        return Err(ApiError::invalid(
            "limit",
            "offset >= 0 and limit in 1..=10000",
        ));
    }
    let impis = store.list_impis(p.offset, p.limit).await?;
    Ok(Json(json!({ "offset": p.offset, "impis": impis })))
}

/// The registered public identities (the HSS's view: who, and which S-CSCF serves them; the
/// S-CSCF knows the contacts and until when).
async fn registrations(
    State(store): State<Store>,
    Query(p): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    if p.offset < 0 || !(1..=10_000).contains(&p.limit) {
        return Err(ApiError::invalid(
            "limit",
            "offset >= 0 and limit in 1..=10000",
        ));
    }
    let regs = store.registered_identities(p.offset, p.limit).await?;
    Ok(Json(json!({
        "offset": p.offset,
        "registrations": regs.iter().map(|r| json!({
            "impu": r.impu,
            "impi": r.impi,
            "scscf": r.scscf.as_ref().map(|s| json!({"server_name": s.server_name, "diameter_host": s.diameter_host})),
        })).collect::<Vec<_>>(),
    })))
}

async fn create(
    State(s): State<AppState>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new = parse::<SubscriberReq>(&body)?.into_new()?;
    s.store.add_subscriber(&new).await?;
    s.subs.added();
    Ok((StatusCode::CREATED, Json(json!({ "impi": new.impi }))))
}

async fn show(
    State(s): State<AppState>,
    Path(impi): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = s.store.subscriber(&impi).await?.ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        field: Some("impi".into()),
        message: format!("private identity `{impi}` not found"),
    })?;
    Ok(Json(json!({
        "name": v.name,
        "impi": v.impi,
        "auth_scheme": v.auth_scheme,
        "sqn": v.sqn,
        "capability_set": v.capability_set,
        "scscf": v.scscf.map(|s| json!({"server_name": s.server_name, "diameter_host": s.diameter_host})),
        "impus": v.public_identities.iter().map(|p| json!({
            "impu": p.impu, "barred": p.barred, "irs": p.irs, "reg_state": p.reg_state,
        })).collect::<Vec<_>>(),
        "last_authentication": s.subs.last_authentication(&v.impi).map(|a| json!({
            "outcome": a.outcome,
            "at": ims_net::clock::rfc3339(a.at),
            "scscf": a.scscf,
            "failures_in_a_row": a.failures_in_a_row,
        })),
    })))
}

async fn remove(
    State(s): State<AppState>,
    Path(impi): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.store.delete_subscriber(&impi).await?;
    s.subs.forget(&impi)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CapsReq {
    #[serde(default)]
    mandatory: Vec<u32>,
    #[serde(default)]
    optional: Vec<u32>,
    #[serde(default)]
    server_names: Vec<String>,
}

async fn put_caps(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let c: CapsReq = parse(&body)?;
    let set = CapabilitySet {
        name,
        mandatory: c.mandatory,
        optional: c.optional,
        server_names: c.server_names,
    };
    s.store.put_capability_set(&set).await?;
    s.subs.put_capability_set(&set)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ImportQuery {
    /// The line number of the first row in the whole file (2: right after the header).
    #[serde(default = "second_line")]
    first_line: u64,
}

fn second_line() -> u64 {
    2
}

/// CSV with a header row. Columns (by name, any order; empty cells are absent):
/// `impi, impus (separated by spaces or ';'), k, op, opc, amf, sqn, realm, password, ha1,
/// capability_set, roaming` (visited network ids the user may register from, separated the
/// same way). A row with `k` is AKA, a row with `realm` is digest.
///
/// Large files come in parts (imsctl sends 5,000 rows a request, each part with the header
/// row): `?first_line=N` says which line of the whole file the part's first row is, so that
/// an error names the line of the file, not of the part.
async fn import_csv(
    State(s): State<AppState>,
    Query(q): Query<ImportQuery>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let subs = parse_import_csv(&body, q.first_line)?;
    // Batches before a bad row stay committed: load those too.
    let imported = s.store.import_subscribers(&subs, IMPORT_BATCH).await;
    s.subs.added();
    let n = imported?;
    Ok(Json(json!({ "imported": n })))
}

/// Reads the body of a CSV import ([`import_csv`]'s format) into the subscribers to store,
/// checked as `POST /v1/subscribers` checks one; `first_line` is the line of the whole file
/// the body's first row is on, for the line an error names. The first bad row is the error.
pub fn parse_import_csv(body: &[u8], first_line: u64) -> Result<Vec<NewSubscriber>, ApiError> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(body);
    let headers = rdr
        .headers()
        .map_err(|e| ApiError::invalid("header", format!("CSV header: {e}")))?
        .clone();
    const KNOWN: [&str; 12] = [
        "impi",
        "impus",
        "k",
        "op",
        "opc",
        "amf",
        "sqn",
        "realm",
        "password",
        "ha1",
        "capability_set",
        "roaming",
    ];
    if let Some(bad) = headers.iter().find(|h| !KNOWN.contains(h)) {
        return Err(ApiError::invalid(
            bad,
            format!("CSV header: unknown column `{bad}`"),
        ));
    }
    let col = |name: &str| headers.iter().position(|h| h == name);
    let mut subs = Vec::new();
    for (n, rec) in rdr.records().enumerate() {
        // The line in the whole file: the record's own line in this part (a quoted cell may
        // hold newlines) counted from the part's first row.
        let at = |pos: Option<&csv::Position>| {
            pos.map_or((n as u64).saturating_add(first_line), |p| {
                first_line.saturating_add(p.line().saturating_sub(2))
            })
        };
        let rec =
            rec.map_err(|e| ApiError::invalid("row", format!("line {}: {e}", at(e.position()))))?;
        let line = at(rec.position());
        let get = |name: &str| {
            col(name)
                .and_then(|i| rec.get(i))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let list = |name: &str| -> Vec<String> {
            get(name)
                .unwrap_or_default()
                .split([' ', ';'])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let req = SubscriberReq {
            impi: get("impi").unwrap_or_default(),
            name: None,
            impus: list("impus").into_iter().map(ImpuReq::Uri).collect(),
            aka: get("k").map(|k| AkaReq {
                k,
                op: get("op"),
                opc: get("opc"),
                amf: get("amf").unwrap_or_else(default_amf),
                sqn: get("sqn").and_then(|s| s.parse().ok()).unwrap_or(0),
            }),
            digest: get("realm").map(|realm| DigestReq {
                realm,
                password: get("password"),
                ha1: get("ha1"),
            }),
            ifc_xml: String::new(),
            capability_set: get("capability_set"),
            roaming_allowed: list("roaming"),
        };
        if get("sqn").is_some_and(|s| s.parse::<u64>().is_err()) {
            return Err(ApiError::invalid(
                "sqn",
                format!("line {line}: sqn: not a number"),
            ));
        }
        let new = req.into_new().map_err(|e| ApiError {
            message: format!("line {line}: {}", e.message),
            ..e
        })?;
        subs.push(new);
    }
    Ok(subs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opc_from_op_matches_ts_35_208_set_1() {
        let k = hex::decode("465b5ce8b199b49faa5f0a2ee238a6bc").unwrap();
        let op = hex::decode("cdc202d5123e20f62b6d676ac72cb318").unwrap();
        assert_eq!(
            hex::encode(&*opc_from_op(&k, &op).unwrap()),
            "cd63cb71954a9f4e48a5994e37a02baf"
        );
    }

    /// Fuzz regression (hss_csv): `?first_line=` near u64::MAX overflowed the line number of
    /// a bad row (a panic in the handler instead of a 422).
    #[test]
    fn a_huge_first_line_is_no_overflow() {
        let body = b"impi,impus\n.,sip:\n";
        let e = parse_import_csv(body, u64::MAX).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.message.contains(&u64::MAX.to_string()), "{}", e.message);
    }
}
