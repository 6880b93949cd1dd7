//! The HSS admin API over real HTTP: provisioning, secrets transformed and never shown, errors
//! that name the field, CSV bulk import, and an OpenAPI document that lists every route.

use ims_hss::{Config, Hss};
use ims_store::{Credentials, Store};
use serde_json::{Value, json};

pub(crate) struct Running {
    pub(crate) base: String,
    pub(crate) db: String,
    pub(crate) diameter: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start() -> Running {
    start_with(ims_hss::DiameterConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
}

/// An HSS in this process (its own runtime thread) with this Diameter configuration.
pub(crate) fn start_with(diameter: ims_hss::DiameterConfig) -> Running {
    let dir = ims_testkit::scratch_dir("hss-admin");
    start_on(
        format!("sqlite://{}", dir.join("hss.sqlite").display()),
        diameter,
    )
}

/// An HSS on the database at `db` (SQLite file or PostgreSQL URL).
pub(crate) fn start_on(db: String, diameter: ims_hss::DiameterConfig) -> Running {
    start_logged(db, diameter, None)
}

/// As [`start_on`], its runtime's threads logging to `logs` when given.
pub(crate) fn start_logged(
    db: String,
    diameter: ims_hss::DiameterConfig,
    logs: Option<tracing::Dispatch>,
) -> Running {
    let cfg = Config {
        database: db.clone(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: None,
        home_network: "hims.net".into(),
        log: "info".into(),
        preload: true,
        diameter,
    };
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let _here = logs.as_ref().map(tracing::dispatcher::set_default);
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        rt.enable_all();
        if let Some(d) = logs {
            // Every thread of the HSS's runtime logs there (for as long as it lives).
            rt.on_thread_start(move || std::mem::forget(tracing::dispatcher::set_default(&d)));
        }
        let rt = rt.build().unwrap();
        rt.block_on(async move {
            let hss = Hss::start(&cfg).await.unwrap();
            addr_tx
                .send((hss.admin_addr().unwrap(), hss.diameter_addr()))
                .unwrap();
            hss.run_until(async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        });
    });
    let (addr, diameter) = addr_rx.recv().unwrap();
    Running {
        base: format!("http://{addr}"),
        db,
        diameter,
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

pub(crate) fn post(url: &str, body: Value) -> (u16, Value) {
    let mut r = agent().post(url).send_json(body).unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub(crate) fn get(url: &str) -> (u16, String) {
    let mut r = agent().get(url).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

async fn stored(db: &str, impi: &str) -> Option<Credentials> {
    Store::open(db)
        .await
        .unwrap()
        .credentials(impi)
        .await
        .unwrap()
}

#[test]
fn provisioning_shows_no_secret_and_names_every_bad_field() {
    let hss = start();
    let b = &hss.base;
    let rt = tokio::runtime::Runtime::new().unwrap();

    // AKA with OP (TS 35.208 set 1): stored as OPc, never echoed.
    let (st, body) = post(
        &format!("{b}/v1/subscribers"),
        json!({
            "impi": "001010000000001@ims.mnc001.mcc001.3gppnetwork.org",
            "impus": ["sip:001010000000001@ims.mnc001.mcc001.3gppnetwork.org",
                      {"impu": "tel:+491701234567", "irs": 1},
                      {"impu": "sip:hidden@ims.mnc001.mcc001.3gppnetwork.org", "barred": true, "irs": 2}],
            "aka": {"k": "465b5ce8b199b49faa5f0a2ee238a6bc", "op": "cdc202d5123e20f62b6d676ac72cb318", "amf": "b9b9", "sqn": 64},
            "roaming_allowed": ["vims.net"]
        }),
    );
    assert_eq!(st, 201, "{body}");
    let Some(Credentials::Aka { opc, amf, sqn, .. }) = rt.block_on(stored(
        &hss.db,
        "001010000000001@ims.mnc001.mcc001.3gppnetwork.org",
    )) else {
        panic!("AKA subscriber stored");
    };
    assert_eq!(hex::encode(&*opc), "cd63cb71954a9f4e48a5994e37a02baf");
    assert_eq!((amf, sqn), ([0xb9, 0xb9], 64));

    let (st, shown) = get(&format!(
        "{b}/v1/subscribers/001010000000001@ims.mnc001.mcc001.3gppnetwork.org"
    ));
    assert_eq!(st, 200);
    for secret in ["465b5ce8", "cdc202d5", "cd63cb71", "\"k\"", "\"op", "opc"] {
        assert!(!shown.contains(secret), "secret `{secret}` shown: {shown}");
    }
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["auth_scheme"], "aka");
    assert_eq!(shown["sqn"], 64);
    assert_eq!(shown["impus"].as_array().unwrap().len(), 3);

    // Digest with a password: stored as HA1 = MD5(impi:realm:password).
    let (st, _) = post(
        &format!("{b}/v1/subscribers"),
        json!({"impi": "alice@hims.net", "impus": ["sip:alice@hims.net"], "digest": {"realm": "hims.net", "password": "secret"}}),
    );
    assert_eq!(st, 201);
    let Some(Credentials::Digest { ha1, realm }) = rt.block_on(stored(&hss.db, "alice@hims.net"))
    else {
        panic!("digest subscriber stored");
    };
    // md5("alice@hims.net:hims.net:secret")
    assert_eq!(realm, "hims.net");
    {
        use md5::{Digest, Md5};
        let want = hex::encode(Md5::digest(b"alice@hims.net:hims.net:secret"));
        assert_eq!(ha1.as_str(), want);
    }

    // Every bad input is a 4xx naming the field.
    let cases = [
        (
            json!({"impi": "bob@hims.net", "impus": ["sip:bob@hims.net"], "aka": {"k": "zz", "opc": "00"}}),
            422,
            "k",
        ),
        (
            json!({"impi": "bob@hims.net", "impus": ["sip:bob@hims.net"], "aka": {"k": "465b5ce8b199b49faa5f0a2ee238a6bc"}}),
            422,
            "op",
        ),
        (
            json!({"impi": "bob@hims.net", "impus": ["sip:bob@hims.net"], "aka": {"k": "465b5ce8b199b49faa5f0a2ee238a6bc", "opc": "cd63cb71954a9f4e48a5994e37a02baf", "kk": 1}}),
            422,
            "kk",
        ),
        (json!({"impi": "bob@hims.net", "impus": []}), 422, "impus"),
        (json!({"impus": ["sip:bob@hims.net"]}), 422, "impi"),
        (
            json!({"impi": "bob@hims.net", "impus": ["mailto:bob@hims.net"], "digest": {"realm": "hims.net", "password": "x"}}),
            422,
            "impus",
        ),
        (
            json!({"impi": "bob@hims.net", "impus": ["sip:bob@hims.net"]}),
            422,
            "aka",
        ),
        (
            json!({"impi": "bob@hims.net", "impus": ["sip:alice@hims.net"], "digest": {"realm": "hims.net", "password": "x"}}),
            409,
            "public identity",
        ),
    ];
    for (body, want_status, want_field) in cases {
        let (st, err) = post(&format!("{b}/v1/subscribers"), body.clone());
        assert_eq!(st, want_status, "{body} -> {err}");
        assert_eq!(err["field"], want_field, "{body} -> {err}");
        assert!(err["error"].as_str().unwrap().len() > 5);
    }
    assert!(
        rt.block_on(stored(&hss.db, "bob@hims.net")).is_none(),
        "nothing half-written"
    );

    // Unknown, list, delete.
    assert_eq!(get(&format!("{b}/v1/subscribers/nobody@hims.net")).0, 404);
    let (st, page) = get(&format!("{b}/v1/subscribers?limit=1&offset=1"));
    assert_eq!(st, 200);
    let page: Value = serde_json::from_str(&page).unwrap();
    assert_eq!(page["impis"], json!(["alice@hims.net"]));
    assert_eq!(get(&format!("{b}/v1/subscribers?limit=0")).0, 422);
    let r = agent()
        .delete(&format!("{b}/v1/subscribers/alice@hims.net"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = agent()
        .delete(&format!("{b}/v1/subscribers/alice@hims.net"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // Capability sets.
    let r = agent()
        .put(&format!("{b}/v1/capability-sets/default"))
        .send_json(
            json!({"mandatory": [1], "optional": [2, 3], "server_names": ["sip:scscf1.hims.net"]}),
        )
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let mut r = agent()
        .put(&format!("{b}/v1/capability-sets/x"))
        .send_json(json!({"mandatory": ["a"]}))
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let err: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("invalid type"),
        "{err}"
    );
}

#[test]
fn csv_import_and_openapi() {
    let hss = start();
    let b = &hss.base;
    let mut csv = String::from("impi,impus,k,opc,amf,sqn,realm,password,roaming\n");
    for i in 0..1500 {
        csv.push_str(&format!(
            "u{i}@hims.net,sip:u{i}@hims.net;tel:+4930{i:06},465b5ce8b199b49faa5f0a2ee238a6bc,cd63cb71954a9f4e48a5994e37a02baf,8000,0,,,vims.net;other.net\n"
        ));
    }
    csv.push_str("d1@hims.net,sip:d1@hims.net,,,,,hims.net,pw,\n");
    let mut r = agent()
        .post(&format!("{b}/v1/subscribers/import"))
        .header("content-type", "text/csv")
        .send(csv.as_bytes())
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(v["imported"], 1501);
    // The roaming column reached the store; an empty cell allows nothing.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (u7, d1) = rt.block_on(async {
        let store = Store::open(&hss.db).await.unwrap();
        (
            [
                store
                    .roaming_allowed("sip:u7@hims.net", "vims.net", "hims.net")
                    .await
                    .unwrap(),
                store
                    .roaming_allowed("tel:+4930000007", "other.net", "hims.net")
                    .await
                    .unwrap(),
                store
                    .roaming_allowed("sip:u7@hims.net", "third.net", "hims.net")
                    .await
                    .unwrap(),
            ],
            store
                .roaming_allowed("sip:d1@hims.net", "vims.net", "hims.net")
                .await
                .unwrap(),
        )
    });
    assert_eq!((u7, d1), ([true, true, false], false));

    // A bad row is named by its line; an unknown column by its name.
    let bad = "impi,impus,k,opc\nx@hims.net,sip:x@hims.net,465b5ce8b199b49faa5f0a2ee238a6bc,cd63cb71954a9f4e48a5994e37a02baf\ny@hims.net,sip:y@hims.net,notahexkey,cd63cb71954a9f4e48a5994e37a02baf\n";
    let mut r = agent()
        .post(&format!("{b}/v1/subscribers/import"))
        .send(bad.as_bytes())
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(v["field"], "k");
    assert!(
        v["error"].as_str().unwrap().starts_with("line 3: k:"),
        "{v}"
    );
    let mut r = agent()
        .post(&format!("{b}/v1/subscribers/import"))
        .send("impi,imsi\n".as_bytes())
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(v["field"], "imsi");

    // The OpenAPI document is valid JSON and documents every route the router serves.
    let (st, doc) = get(&format!("{b}/openapi.json"));
    assert_eq!(st, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    for (path, method) in [
        ("/health", "get"),
        ("/openapi.json", "get"),
        ("/v1/subscribers", "get"),
        ("/v1/subscribers", "post"),
        ("/v1/subscribers/import", "post"),
        ("/v1/subscribers/{impi}", "get"),
        ("/v1/subscribers/{impi}", "delete"),
        ("/v1/capability-sets/{name}", "put"),
        ("/v1/registrations", "get"),
        ("/v1/subscribers/{impi}/deregister", "post"),
        ("/v1/subscribers/{impi}/push-profile", "post"),
        ("/metrics", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} undocumented"
        );
    }
    assert_eq!(
        doc["paths"].as_object().unwrap().len(),
        10,
        "no undocumented extra paths"
    );
    let (st, health) = get(&format!("{b}/health"));
    assert_eq!((st, health.contains("\"sqlite\"")), (200, true));
}
