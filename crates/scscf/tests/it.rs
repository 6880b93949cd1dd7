//! The S-CSCF registrar against a real HSS: each test starts an in-process HSS (SQLite in a
//! scratch directory) with an AKA subscriber (TS 35.208 test set 1 K/OP) and a digest one,
//! and a `Registrar` connected to it over real Diameter TCP, then drives `handle_register`
//! with real REGISTER messages. The UE side is the aka crate's USIM model (Milenage): it must
//! accept the AUTN of each challenge, and its RES is the digest password. What the HSS ends
//! up believing (registration state, serving S-CSCF) is read from its store.
//!
//! The `reg` event package tests start the whole daemon ([`ims_scscf::Scscf`]) on
//! 127.0.0.1 port 0 and play the UE or P-CSCF on a real UDP socket: REGISTER and SUBSCRIBE
//! go through the S-CSCF's transaction layer, the NOTIFYs come back to the socket, are
//! answered, and their `application/reginfo+xml` bodies are read with a minimal XML reader.
//!
//! `hostile` (tests/it/hostile.rs): the S-CSCF's Diameter side against hostile HSSs.
//! `expiry` (tests/it/expiry.rs): a wave of expiries keeps several SARs in flight.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "it/expiry.rs"]
mod expiry;
#[path = "it/hostile.rs"]
mod hostile;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use ims_aka::digest_aka::{self, AkaNonce};
use ims_aka::{
    DigestParams, Ha1, Key, Milenage, Op, Qop, Sqn, SqnScheme, Usim, UsimResponse, UsimSqnState,
};
use ims_net::diameter::CxClientConfig;
use ims_scscf::{Config, RegEvent, RegEventKind, Registrar};
use ims_sip::{HeaderName, Message, RequestBuilder};
use ims_store::{Credentials, NewPublicIdentity, NewSubscriber, Store};
use tokio::sync::broadcast;
use zeroize::Zeroizing;

const K: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
const OP: &str = "cdc202d5123e20f62b6d676ac72cb318";
const OPC: &str = "cd63cb71954a9f4e48a5994e37a02baf";
const ALICE_IMPI: &str = "alice.private@hims.net";
const ALICE: &str = "sip:alice@hims.net";
const ALICE_TEL: &str = "tel:+4930123";
const ALICE_BARRED: &str = "sip:alice.hidden@hims.net";
const BOB_IMPI: &str = "bob.private@hims.net";
const BOB: &str = "sip:bob@hims.net";
const BOB_PASSWORD: &str = "secret";
const NAME: &str = "sip:scscf1.hims.net:5060";
const PATH: &str = "<sip:term@pcscf1.vims.net;lr>";

// ----------------------------------------------------------------------------------------
// the lab: an HSS, its store, a registrar

struct Lab {
    dir: PathBuf,
    hss_store: Store,
    diameter: SocketAddr,
    admin: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn lab() -> Lab {
    lab_with(ims_hss::DiameterConfig::default().max_waiting).await
}

/// The lab with an HSS that lets `max_waiting` Cx requests wait on its store (0: it answers
/// every request 3004 DIAMETER_TOO_BUSY).
async fn lab_with(max_waiting: usize) -> Lab {
    let dir = ims_testkit::scratch_dir("scscf");
    let db = format!("sqlite://{}", dir.join("hss.sqlite").display());
    let cfg = ims_hss::Config {
        database: db.clone(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        admin_token: None,
        home_network: "hims.net".into(),
        log: "info".into(),
        preload: true,
        diameter: ims_hss::DiameterConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            origin_host: Some("hss1.hims.net".into()),
            allowed_peers: vec!["scscf1.hims.net".into()],
            max_waiting,
            ..Default::default()
        },
    };
    let hss = ims_hss::Hss::start(&cfg).await.unwrap();
    let diameter = hss.diameter_addr();
    let admin = hss.admin_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(hss.run_until(async {
        let _ = rx.await;
    }));
    let hss_store = Store::open(&db).await.unwrap();
    let pi = |impu: &str, barred: bool| NewPublicIdentity {
        impu: impu.into(),
        barred,
        irs: 0,
    };
    hss_store
        .add_subscriber(&NewSubscriber {
            name: "alice".into(),
            impi: ALICE_IMPI.into(),
            credentials: Credentials::Aka {
                k: Zeroizing::new(hex::decode(K).unwrap()),
                opc: Zeroizing::new(hex::decode(OPC).unwrap()),
                amf: [0x80, 0x00],
                sqn: 0,
            },
            public_identities: vec![
                pi(ALICE, false),
                pi(ALICE_TEL, false),
                pi(ALICE_BARRED, true),
            ],
            ifc_xml: String::new(),
            capability_set: None,
            roaming_allowed: vec![],
        })
        .await
        .unwrap();
    let ha1 = Ha1::compute(BOB_IMPI, "hims.net", BOB_PASSWORD.as_bytes());
    hss_store
        .add_subscriber(&NewSubscriber {
            name: "bob".into(),
            impi: BOB_IMPI.into(),
            credentials: Credentials::Digest {
                realm: "hims.net".into(),
                ha1: Zeroizing::new(ha1.to_hex().to_string()),
            },
            public_identities: vec![pi(BOB, false)],
            ifc_xml: String::new(),
            capability_set: None,
            roaming_allowed: vec![],
        })
        .await
        .unwrap();
    Lab {
        dir,
        hss_store,
        diameter,
        admin,
        _stop: stop,
    }
}

impl Lab {
    fn config(&self) -> Config {
        Config {
            sip_listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: None,
            name: NAME.into(),
            realm: "hims.net".into(),
            home_domains: vec![],
            database: format!("sqlite://{}", self.dir.join("scscf.sqlite").display()),
            min_expires: 2,
            max_expires: 3600,
            default_expires: 600,
            reg_await_auth_seconds: 240,
            auth_failures_before_lockout: 5,
            auth_lockout_seconds: 60,
            subscribe_min_expires: 60,
            subscribe_max_expires: 3600,
            log: "info".into(),
            dns: vec![],
            icscf: None,
            diameter: CxClientConfig {
                hss: self.diameter,
                origin_host: "scscf1.hims.net".into(),
                origin_realm: "hims.net".into(),
                destination_realm: "hims.net".into(),
                destination_host: Some("hss1.hims.net".into()),
                watchdog_seconds: 30,
                request_timeout_seconds: 5,
                local_address: None,
            },
        }
    }

    async fn registrar(&self) -> Registrar {
        self.registrar_with(self.config()).await
    }

    async fn registrar_with(&self, cfg: Config) -> Registrar {
        let r = Registrar::start(cfg).await.unwrap();
        assert!(
            r.wait_diameter(Duration::from_secs(10)).await,
            "CER/CEA with the HSS"
        );
        r
    }

    /// (registration state, serving S-CSCF) as the HSS stores them.
    async fn hss_view(&self, impu: &str) -> (i64, Option<String>) {
        let pi = self.hss_store.public_identity(impu).await.unwrap().unwrap();
        let scscf = self.hss_store.scscf_for(impu).await.unwrap();
        (pi.reg_state, scscf.map(|a| a.server_name))
    }
}

// ----------------------------------------------------------------------------------------
// the UE

fn usim() -> Usim {
    Usim::new(
        Milenage::with_op(&Key::from_hex(K).unwrap(), &Op::from_hex(OP).unwrap()),
        UsimSqnState::new(SqnScheme::default()),
    )
}

struct Ue {
    impi: String,
    impu: String,
    call_id: String,
    cseq: u32,
    contact: String,
    /// The P-CSCF's Path entry in its REGISTERs.
    path: String,
}

impl Ue {
    fn new(impi: &str, impu: &str, contact: &str) -> Ue {
        Ue {
            impi: impi.into(),
            impu: impu.into(),
            call_id: format!("call-{impi}"),
            cseq: 0,
            contact: contact.into(),
            path: PATH.into(),
        }
    }

    /// A REGISTER as the I-CSCF forwards it (two Vias, the P-CSCF's Path).
    fn register(&mut self, authorization: Option<String>, extra: &[(&str, &str)]) -> Message {
        self.cseq += 1;
        let mut b = RequestBuilder::new("REGISTER", "sip:hims.net")
            .header(
                "Via",
                &format!("SIP/2.0/UDP 127.0.0.20;branch=z9hG4bKi{}", self.cseq),
            )
            .header(
                "Via",
                &format!(
                    "SIP/2.0/UDP 10.0.0.2:5060;rport;branch=z9hG4bKu{}",
                    self.cseq
                ),
            )
            .header("Path", &self.path)
            .header("From", &format!("<{}>;tag=ue{}", self.impu, self.cseq))
            .header("To", &format!("<{}>", self.impu))
            .header("Call-ID", &self.call_id)
            .header("CSeq", &format!("{} REGISTER", self.cseq))
            .header("Max-Forwards", "69")
            .header("Supported", "path");
        let mut has_contact = false;
        for (n, v) in extra {
            has_contact |= n.eq_ignore_ascii_case("Contact");
            b = b.header(n, v);
        }
        if !has_contact {
            b = b.header("Contact", &self.contact);
        }
        if let Some(a) = authorization {
            b = b.header("Authorization", &a);
        }
        b.build().unwrap()
    }

    fn initial_auth(&self) -> String {
        format!(
            r#"Digest username="{}", realm="hims.net", uri="sip:hims.net", nonce="", response="""#,
            self.impi
        )
    }

    fn vouched_auth(&self) -> String {
        format!(
            r#"Digest username="{}", realm="hims.net", uri="sip:hims.net", nonce="", response="", integrity-protected="yes""#,
            self.impi
        )
    }
}

/// The WWW-Authenticate of a 401.
fn challenge(
    resp: &Message,
) -> (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
) {
    assert_eq!(resp.status(), Some(401), "{resp}");
    let a = resp
        .auth(HeaderName::WwwAuthenticate)
        .next()
        .unwrap()
        .unwrap();
    (
        a.realm().unwrap().to_owned(),
        a.nonce().unwrap().to_owned(),
        a.algorithm().unwrap().to_owned(),
        a.ck().map(str::to_owned),
        a.ik().map(str::to_owned),
        a.qop().unwrap().to_owned(),
    )
}

/// Alice gets a fresh challenge and answers it with `password` (not her RES): the
/// registrar's answer.
async fn answer_alice_wrongly(r: &Registrar, ue: &mut Ue, password: &[u8]) -> Message {
    let c = r
        .handle_register(&ue.register(Some(ue.initial_auth()), &[]))
        .await;
    let (realm, nonce, alg, _, _, _) = challenge(&c);
    let wrong = answer(ALICE_IMPI, &realm, &nonce, &alg, Qop::Auth, password);
    r.handle_register(&ue.register(Some(wrong), &[])).await
}

/// An Authorization answering a challenge with `password`.
fn answer(impi: &str, realm: &str, nonce: &str, alg: &str, qop: Qop, password: &[u8]) -> String {
    let p = DigestParams {
        username: impi,
        realm,
        nonce,
        uri: "sip:hims.net",
        qop: Some(qop),
        nc: Some("00000001"),
        cnonce: Some("0a4f113b"),
        method: "REGISTER",
        body: b"",
    };
    let response = p.response_with_password(password).unwrap();
    format!(
        r#"Digest username="{impi}", realm="{realm}", uri="sip:hims.net", nonce="{nonce}", response="{response}", algorithm={alg}, qop={}, nc=00000001, cnonce="0a4f113b""#,
        qop.as_str()
    )
}

/// Runs the USIM on an AKA challenge: (RES, CK hex, IK hex).
fn run_usim(usim: &mut Usim, nonce: &str) -> (Vec<u8>, String, String) {
    let n = AkaNonce::decode(nonce).expect("the nonce is base64(RAND||AUTN)");
    match usim
        .authenticate(&n.rand, &n.autn)
        .expect("AUTN from our HSS")
    {
        UsimResponse::Success(r) => (
            r.res.expose().to_vec(),
            r.ck.to_hex().to_string(),
            r.ik.to_hex().to_string(),
        ),
        UsimResponse::SyncFailure(_) => panic!("unexpected sync failure"),
    }
}

/// Full AKA registration: 401, then the answer; returns the final response.
async fn aka_register(
    r: &Registrar,
    ue: &mut Ue,
    usim: &mut Usim,
    qop: Qop,
    extra: &[(&str, &str)],
) -> Message {
    let resp = r
        .handle_register(&ue.register(Some(ue.initial_auth()), extra))
        .await;
    let (realm, nonce, alg, _, _, _) = challenge(&resp);
    let (res, _, _) = run_usim(usim, &nonce);
    let auth = answer(&ue.impi, &realm, &nonce, &alg, qop, &res);
    r.handle_register(&ue.register(Some(auth), extra)).await
}

fn values(m: &Message, name: HeaderName) -> Vec<String> {
    m.headers_named(name)
        .map(|h| h.value_str().unwrap().to_owned())
        .collect()
}

async fn next_event(rx: &mut broadcast::Receiver<RegEvent>) -> RegEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a registration event")
        .unwrap()
}

fn reason(m: &Message) -> String {
    String::from_utf8_lossy(m.reason().unwrap()).into_owned()
}

// ----------------------------------------------------------------------------------------
// tests

#[tokio::test(flavor = "multi_thread")]
async fn aka_register_refresh_and_deregister() {
    let lab = lab().await;
    let r = lab.registrar().await;
    let mut events = r.subscribe();
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>;expires=600");
    let mut usim = usim();

    // 1. The challenge: AKAv1-MD5, both qops, CK/IK for the P-CSCF, a nonce the USIM takes.
    let first = r
        .handle_register(&ue.register(Some(ue.initial_auth()), &[]))
        .await;
    let (realm, nonce, alg, ck, ik, qop) = challenge(&first);
    assert_eq!(realm, "hims.net");
    assert_eq!(alg, "AKAv1-MD5");
    assert_eq!(qop, "auth,auth-int");
    assert!(
        first.to_addr().unwrap().tag().is_some(),
        "To tag on the 401"
    );
    let (res, ue_ck, ue_ik) = run_usim(&mut usim, &nonce);
    assert_eq!(
        ck.as_deref(),
        Some(ue_ck.as_str()),
        "ck is CK in lowercase hex"
    );
    assert_eq!(
        ik.as_deref(),
        Some(ue_ik.as_str()),
        "ik is IK in lowercase hex"
    );
    // The HSS recorded us as the S-CSCF that asked (MAR), the user is not registered yet.
    assert_eq!(lab.hss_view(ALICE).await, (0, Some(NAME.into())));

    // 2. The answer (qop=auth): 200 with everything the UE and the P-CSCF need.
    let auth = answer(ALICE_IMPI, &realm, &nonce, &alg, Qop::Auth, &res);
    let ok = r.handle_register(&ue.register(Some(auth), &[])).await;
    assert_eq!(ok.status(), Some(200), "{ok}");
    assert_eq!(values(&ok, HeaderName::Path), [PATH]);
    assert_eq!(
        values(&ok, HeaderName::ServiceRoute),
        ["<sip:orig@scscf1.hims.net:5060;lr>"]
    );
    let pau = values(&ok, HeaderName::PAssociatedUri).join(",");
    assert!(pau.starts_with(&format!("<{ALICE}>")), "{pau}");
    assert!(pau.contains(&format!("<{ALICE_TEL}>")), "{pau}");
    assert!(
        !pau.contains(ALICE_BARRED),
        "barred identities are not associated: {pau}"
    );
    assert_eq!(
        values(&ok, HeaderName::Contact),
        ["<sip:alice@10.0.0.2:5060>;expires=600"]
    );
    assert!(
        ok.header(HeaderName::Date)
            .unwrap()
            .value_str()
            .unwrap()
            .ends_with(" GMT")
    );
    assert_eq!(ok.vias().count(), 2);
    // The HSS: registered, served by us (SAR REGISTRATION); the implicit set too.
    assert_eq!(lab.hss_view(ALICE).await, (1, Some(NAME.into())));
    assert_eq!(lab.hss_view(ALICE_TEL).await.0, 1);
    // Our view, by the IMPU and by an implicitly registered one.
    let reg = r.registration(ALICE_TEL).unwrap();
    assert_eq!(reg.impu, ALICE);
    assert_eq!(reg.bindings.len(), 1);
    assert_eq!(reg.bindings[0].path, [PATH]);
    // The User-Data XML is kept in the store, not in memory (issue #16: bytes per UE).
    assert!(reg.user_data.is_empty(), "{}", reg.user_data);
    let stored = lab_store(&lab)
        .await
        .registration(ALICE)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.user_data.contains("<IMSSubscription>"), "{stored:?}");
    let ev = next_event(&mut events).await;
    assert_eq!(ev.kind, RegEventKind::Registered);
    assert_eq!(ev.contacts, ["sip:alice@10.0.0.2:5060"]);

    // 3. Refresh vouched for by the P-CSCF (integrity-protected="yes"): no challenge.
    let refresh = r
        .handle_register(&ue.register(
            Some(ue.vouched_auth()),
            &[("Contact", "<sip:alice@10.0.0.2:5060>;expires=300")],
        ))
        .await;
    assert_eq!(refresh.status(), Some(200), "{refresh}");
    assert_eq!(
        values(&refresh, HeaderName::Contact),
        ["<sip:alice@10.0.0.2:5060>;expires=300"]
    );
    assert_eq!(next_event(&mut events).await.kind, RegEventKind::Refreshed);
    // ... but it may not add a contact nobody authenticated.
    let sneaky = r
        .handle_register(&ue.register(
            Some(ue.vouched_auth()),
            &[("Contact", "<sip:mallory@10.9.9.9>;expires=300")],
        ))
        .await;
    assert_eq!(sneaky.status(), Some(403), "{sneaky}");

    // 4. Refresh with a new challenge, answered with qop=auth-int, adding a second contact.
    let two = aka_register(
        &r,
        &mut ue,
        &mut usim,
        Qop::AuthInt,
        &[(
            "Contact",
            "<sip:alice@[2001:db8::2]:5060>;+sip.instance=\"<urn:gsma:imei:35209900-176148-0>\"",
        )],
    )
    .await;
    assert_eq!(two.status(), Some(200), "{two}");
    let contacts = values(&two, HeaderName::Contact);
    assert_eq!(contacts.len(), 2, "{contacts:?}");
    assert!(contacts.contains(
        &"<sip:alice@[2001:db8::2]:5060>;+sip.instance=\"<urn:gsma:imei:35209900-176148-0>\";expires=600"
            .to_owned()
    ));
    assert_eq!(next_event(&mut events).await.kind, RegEventKind::Refreshed);
    let stored = lab_store(&lab)
        .await
        .registration(ALICE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.bindings.len(), 2, "both bindings persisted");

    // 5. One contact leaves (expires=0): the other stays, the IMPU stays registered.
    let one = r
        .handle_register(&ue.register(
            Some(ue.vouched_auth()),
            &[("Contact", "<sip:alice@10.0.0.2:5060>;expires=0")],
        ))
        .await;
    assert_eq!(one.status(), Some(200), "{one}");
    assert_eq!(values(&one, HeaderName::Contact).len(), 1);
    assert_eq!(lab.hss_view(ALICE).await.0, 1);
    let ev = next_event(&mut events).await;
    assert_eq!(ev.kind, RegEventKind::Deregistered);
    assert_eq!(ev.contacts, ["sip:alice@10.0.0.2:5060"]);
    assert_eq!(ev.contacts_left.len(), 1);

    // 6. Deregistration of everything (Contact: *, Expires: 0): SAR USER_DEREGISTRATION.
    let bye = r
        .handle_register(&ue.register(
            Some(ue.vouched_auth()),
            &[("Contact", "*"), ("Expires", "0")],
        ))
        .await;
    assert_eq!(bye.status(), Some(200), "{bye}");
    assert!(bye.header(HeaderName::Contact).is_none());
    assert!(r.registration(ALICE).is_none());
    assert!(r.registration(ALICE_TEL).is_none());
    assert_eq!(lab.hss_view(ALICE).await, (0, None));
    assert_eq!(lab.hss_view(ALICE_TEL).await.0, 0);
    let ev = next_event(&mut events).await;
    assert_eq!(ev.kind, RegEventKind::Deregistered);
    assert!(ev.contacts_left.is_empty());
    assert!(
        lab_store(&lab)
            .await
            .registration(ALICE)
            .await
            .unwrap()
            .is_none()
    );

    // 7. Not registered any more: a vouched REGISTER is challenged again.
    let again = r
        .handle_register(&ue.register(Some(ue.vouched_auth()), &[]))
        .await;
    assert_eq!(again.status(), Some(401));
}

async fn lab_store(lab: &Lab) -> Store {
    Store::open(&lab.config().database).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_deregistration_with_expires_zero() {
    let lab = lab().await;
    let r = lab.registrar().await;
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>");
    let mut usim = usim();
    let ok = aka_register(&r, &mut ue, &mut usim, Qop::Auth, &[]).await;
    assert_eq!(ok.status(), Some(200), "{ok}");
    // No expires anywhere: default_expires (600).
    assert_eq!(
        values(&ok, HeaderName::Contact),
        ["<sip:alice@10.0.0.2:5060>;expires=600"]
    );
    // A UE that authenticates its deregistration (Expires: 0 header, named contact).
    let bye = aka_register(&r, &mut ue, &mut usim, Qop::Auth, &[("Expires", "0")]).await;
    assert_eq!(bye.status(), Some(200), "{bye}");
    assert!(r.registration(ALICE).is_none());
    assert_eq!(lab.hss_view(ALICE).await, (0, None));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_res_is_forbidden_and_the_vector_is_spent() {
    let lab = lab().await;
    let r = lab.registrar().await;
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>");
    let first = r
        .handle_register(&ue.register(Some(ue.initial_auth()), &[]))
        .await;
    let (realm, nonce, alg, _, _, _) = challenge(&first);
    let wrong = answer(ALICE_IMPI, &realm, &nonce, &alg, Qop::Auth, b"not-res!");
    let resp = r
        .handle_register(&ue.register(Some(wrong.clone()), &[]))
        .await;
    assert_eq!(resp.status(), Some(403), "{resp}");
    // SAR AUTHENTICATION_FAILURE: the HSS forgot the S-CSCF the MAR recorded.
    assert_eq!(lab.hss_view(ALICE).await, (0, None));
    assert!(r.registration(ALICE).is_none());
    // The nonce was used up: the same answer again is a fresh challenge, not a 200.
    let again = r.handle_register(&ue.register(Some(wrong), &[])).await;
    assert_eq!(again.status(), Some(401));
    let (_, nonce2, _, _, _, _) = challenge(&again);
    assert_ne!(nonce, nonce2);
}

/// A nonce is answered once, by the IMPI it was given to (issue #20's security rules): a
/// replayed Authorization (same nonce, same response) gets a fresh challenge, and an answer
/// made with another IMPI's nonce is never a 200, nor does it spend that IMPI's challenge.
#[tokio::test(flavor = "multi_thread")]
async fn nonces_are_single_use_and_bound_to_their_impi() {
    let lab = lab().await;
    let r = lab.registrar().await;
    let mut alice = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>");
    let mut usim = usim();
    let first = r
        .handle_register(&alice.register(Some(alice.initial_auth()), &[]))
        .await;
    let (realm, nonce, alg, _, _, _) = challenge(&first);
    let (res, _, _) = run_usim(&mut usim, &nonce);
    let auth = answer(ALICE_IMPI, &realm, &nonce, &alg, Qop::Auth, &res);
    let ok = r
        .handle_register(&alice.register(Some(auth.clone()), &[]))
        .await;
    assert_eq!(ok.status(), Some(200), "{ok}");
    // The same Authorization again (a replay, from anyone): challenged, not registered again.
    let replay = r.handle_register(&alice.register(Some(auth), &[])).await;
    assert_eq!(replay.status(), Some(401), "{replay}");
    assert_ne!(challenge(&replay).1, nonce, "a new nonce");

    // Bob (SIP Digest) answers Alice's fresh nonce with his own, right, password.
    let mut bob = Ue::new(BOB_IMPI, BOB, "<sip:bob@10.0.0.3:5060>");
    let alice_challenge = r
        .handle_register(&alice.register(Some(alice.initial_auth()), &[]))
        .await;
    let (a_realm, a_nonce, a_alg, _, _, _) = challenge(&alice_challenge);
    let bob_challenge = r
        .handle_register(&bob.register(Some(bob.initial_auth()), &[]))
        .await;
    let (b_realm, _, b_alg, _, _, _) = challenge(&bob_challenge);
    let stolen = answer(
        BOB_IMPI,
        &b_realm,
        &a_nonce,
        &b_alg,
        Qop::Auth,
        BOB_PASSWORD.as_bytes(),
    );
    let no = r.handle_register(&bob.register(Some(stolen), &[])).await;
    assert_ne!(no.status(), Some(200), "{no}");
    // ... and as Alice (her IMPI, Bob's IMPU): 403 (the IMPI does not own the IMPU).
    let mut mixed = Ue::new(ALICE_IMPI, BOB, "<sip:x@10.0.0.9:5060>");
    let as_alice = answer(
        ALICE_IMPI,
        &a_realm,
        &a_nonce,
        &a_alg,
        Qop::Auth,
        b"anything",
    );
    let no = r
        .handle_register(&mixed.register(Some(as_alice), &[]))
        .await;
    assert_ne!(no.status(), Some(200), "{no}");
    // Alice's challenge was not spent by either: she still answers it.
    let (res, _, _) = run_usim(&mut usim, &a_nonce);
    let auth = answer(ALICE_IMPI, &a_realm, &a_nonce, &a_alg, Qop::Auth, &res);
    let ok = r.handle_register(&alice.register(Some(auth), &[])).await;
    assert_eq!(ok.status(), Some(200), "{ok}");
}

#[tokio::test(flavor = "multi_thread")]
async fn resync_with_auts_then_register() {
    let lab = lab().await;
    let r = lab.registrar().await;
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>");
    // This USIM has seen SQNs far beyond the HSS's: the first AUTN is stale to it.
    let milenage = Milenage::with_op(&Key::from_hex(K).unwrap(), &Op::from_hex(OP).unwrap());
    let sqn_ms = Sqn::new(0x0000_0010_0000).unwrap();
    let mut usim = Usim::new(
        milenage,
        UsimSqnState::with_sqn_ms(SqnScheme::default(), sqn_ms),
    );
    let first = r
        .handle_register(&ue.register(Some(ue.initial_auth()), &[]))
        .await;
    let (realm, nonce, alg, _, _, _) = challenge(&first);
    let n = AkaNonce::decode(&nonce).unwrap();
    let auts = match usim.authenticate(&n.rand, &n.autn).unwrap() {
        UsimResponse::SyncFailure(auts) => auts,
        UsimResponse::Success(_) => panic!("the USIM must refuse the stale SQN"),
    };
    let mut resync = answer(
        ALICE_IMPI,
        &realm,
        &nonce,
        &alg,
        Qop::Auth,
        digest_aka::RESYNC_PASSWORD,
    );
    resync.push_str(&format!(r#", auts="{}""#, digest_aka::encode_auts(&auts)));
    let (logs, _guard) = Logs::capture();
    let fresh = r.handle_register(&ue.register(Some(resync), &[])).await;
    let (realm, nonce2, alg, _, _, _) = challenge(&fresh);
    assert_ne!(nonce, nonce2);
    one_line(&logs.take(), "SQN out of range → resync");
    assert_eq!(last_auth(&lab, ALICE_IMPI), ("resync".into(), 0));
    // The HSS resynchronised: the new AUTN is fresh to the USIM.
    let (res, _, _) = run_usim(&mut usim, &nonce2);
    let auth = answer(ALICE_IMPI, &realm, &nonce2, &alg, Qop::Auth, &res);
    let ok = r.handle_register(&ue.register(Some(auth), &[])).await;
    assert_eq!(ok.status(), Some(200), "{ok}");
    assert_eq!(lab.hss_view(ALICE).await.0, 1);
    // A forged AUTS (bad MAC-S) is refused by the HSS: 403.
    let third = r
        .handle_register(&ue.register(Some(ue.initial_auth()), &[]))
        .await;
    let (realm, nonce3, alg, _, _, _) = challenge(&third);
    let mut forged = answer(
        ALICE_IMPI,
        &realm,
        &nonce3,
        &alg,
        Qop::Auth,
        digest_aka::RESYNC_PASSWORD,
    );
    forged.push_str(r#", auts="AAAAAAAAAAAAAAAAAAA=""#);
    logs.take();
    let no = r.handle_register(&ue.register(Some(forged), &[])).await;
    assert_eq!(no.status(), Some(403), "{no}");
    let lines = logs.take();
    assert!(
        one_line(&lines, "the HSS refused the UE's AUTS").contains("K or OPc"),
        "{lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains("REGISTER refused")));
    assert_eq!(last_auth(&lab, ALICE_IMPI), ("resync_refused".into(), 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn digest_md5_registration() {
    let lab = lab().await;
    let r = lab.registrar().await;
    let mut ue = Ue::new(BOB_IMPI, BOB, "<sip:bob@10.0.0.3:5060>;expires=120");
    let first = r
        .handle_register(&ue.register(Some(ue.initial_auth()), &[]))
        .await;
    let (realm, nonce, alg, ck, ik, qop) = challenge(&first);
    assert_eq!(
        (realm.as_str(), alg.as_str(), qop.as_str()),
        ("hims.net", "MD5", "auth")
    );
    assert_eq!((ck, ik), (None, None), "no AKA keys for digest");
    assert_eq!(nonce.len(), 32);
    // Wrong password first: 403.
    let bad = answer(BOB_IMPI, &realm, &nonce, &alg, Qop::Auth, b"guess");
    let no = r.handle_register(&ue.register(Some(bad), &[])).await;
    assert_eq!(no.status(), Some(403), "{no}");
    // Then properly.
    let first = r
        .handle_register(&ue.register(Some(ue.initial_auth()), &[]))
        .await;
    let (realm, nonce, alg, _, _, _) = challenge(&first);
    let auth = answer(
        BOB_IMPI,
        &realm,
        &nonce,
        &alg,
        Qop::Auth,
        BOB_PASSWORD.as_bytes(),
    );
    let ok = r.handle_register(&ue.register(Some(auth), &[])).await;
    assert_eq!(ok.status(), Some(200), "{ok}");
    assert_eq!(
        values(&ok, HeaderName::PAssociatedUri),
        [format!("<{BOB}>")]
    );
    assert_eq!(
        values(&ok, HeaderName::Contact),
        ["<sip:bob@10.0.0.3:5060>;expires=120"]
    );
    assert_eq!(lab.hss_view(BOB).await, (1, Some(NAME.into())));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_user_is_forbidden() {
    let lab = lab().await;
    let r = lab.registrar().await;
    let mut ue = Ue::new("nobody@hims.net", "sip:nobody@hims.net", "<sip:x@10.0.0.9>");
    let resp = r
        .handle_register(&ue.register(Some(ue.initial_auth()), &[]))
        .await;
    assert_eq!(resp.status(), Some(403), "{resp}");
    assert!(reason(&resp).contains("USER_UNKNOWN"), "{}", reason(&resp));
    // Without Authorization the IMPI is derived from the IMPU (nobody@hims.net): same answer.
    let resp = r.handle_register(&ue.register(None, &[])).await;
    assert_eq!(resp.status(), Some(403), "{resp}");
    // An IMPI that does not own the IMPU: 5002 → 403.
    let mut mismatch = Ue::new(BOB_IMPI, ALICE, "<sip:x@10.0.0.9>");
    let resp = r
        .handle_register(&mismatch.register(Some(mismatch.initial_auth()), &[]))
        .await;
    assert_eq!(resp.status(), Some(403), "{resp}");
    assert!(
        reason(&resp).contains("IDENTITIES_DONT_MATCH"),
        "{}",
        reason(&resp)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_refused_requests() {
    let lab = lab().await;
    let r = lab.registrar().await;
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>");
    let auth = Some(ue.initial_auth());
    // Interval too brief: 423 with Min-Expires, before any Cx.
    let m = ue.register(
        auth.clone(),
        &[("Contact", "<sip:alice@10.0.0.2>;expires=1")],
    );
    let resp = r.handle_register(&m).await;
    assert_eq!(resp.status(), Some(423), "{resp}");
    assert_eq!(resp.header_str(HeaderName::MinExpires), Some("2"));
    assert_eq!(lab.hss_view(ALICE).await, (0, None), "no MAR was sent");
    // A longer interval than allowed is cut down (checked after authentication below).
    // Contact: * with a non-zero Expires.
    let resp = r
        .handle_register(&ue.register(auth.clone(), &[("Contact", "*"), ("Expires", "60")]))
        .await;
    assert_eq!(resp.status(), Some(400), "{resp}");
    assert!(reason(&resp).contains("Contact: *"), "{}", reason(&resp));
    // Contact: * next to an address.
    let resp = r
        .handle_register(&ue.register(
            auth.clone(),
            &[("Contact", "*"), ("Contact", "<sip:a@b>"), ("Expires", "0")],
        ))
        .await;
    assert_eq!(resp.status(), Some(400));
    // Unsupported algorithm.
    let resp = r
        .handle_register(&ue.register(
            Some(format!(
                r#"Digest username="{ALICE_IMPI}", realm="hims.net", uri="sip:hims.net", nonce="", response="", algorithm=SHA-256"#
            )),
            &[],
        ))
        .await;
    assert_eq!(resp.status(), Some(403), "{resp}");
    assert!(reason(&resp).contains("SHA-256"));
    // Missing Contact, missing To, bad CSeq, foreign domain: hand-written messages.
    let raw = |text: String| Message::parse(Bytes::from(text)).unwrap();
    let head = "REGISTER sip:hims.net SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.20;branch=z9hG4bKx\r\n";
    let resp = r
        .handle_register(&raw(format!(
            "{head}From: <{ALICE}>;tag=1\r\nTo: <{ALICE}>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
        )))
        .await;
    assert_eq!(resp.status(), Some(400));
    assert!(
        reason(&resp).contains("missing Contact"),
        "{}",
        reason(&resp)
    );
    let resp = r
        .handle_register(&raw(format!(
            "{head}From: <{ALICE}>;tag=1\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContact: <sip:a@b>\r\nContent-Length: 0\r\n\r\n"
        )))
        .await;
    assert_eq!(resp.status(), Some(400));
    assert!(reason(&resp).contains("To"), "{}", reason(&resp));
    let resp = r
        .handle_register(&raw(format!(
            "{head}From: <{ALICE}>;tag=1\r\nTo: <{ALICE}>\r\nCall-ID: c\r\nCSeq: one REGISTER\r\nContact: <sip:a@b>\r\nContent-Length: 0\r\n\r\n"
        )))
        .await;
    assert_eq!(resp.status(), Some(400));
    assert!(reason(&resp).contains("CSeq"), "{}", reason(&resp));
    let resp = r
        .handle_register(&raw(format!(
            "REGISTER sip:elsewhere.net SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.20;branch=z9hG4bKx\r\nFrom: <{ALICE}>;tag=1\r\nTo: <{ALICE}>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContact: <sip:a@b>\r\nContent-Length: 0\r\n\r\n"
        )))
        .await;
    assert_eq!(resp.status(), Some(403), "{resp}");
    // The daemon's loop: other methods get 501, Max-Forwards 0 gets 483, garbage 400.
    let (ep, _incoming) = ims_net::endpoint::SipEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1",
        ims_sip::transaction::Timers::RFC3261,
    )
    .await
    .unwrap();
    let events = ims_scscf::RegEvents::start(r.clone(), ep);
    let msg = raw(format!(
        "MESSAGE sip:bob@hims.net SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.20;branch=z9hG4bKm\r\nFrom: <{ALICE}>;tag=1\r\nTo: <{BOB}>\r\nCall-ID: m\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ));
    assert_eq!(
        ims_scscf::answer(&r, &events, &msg).await.unwrap().status(),
        Some(501)
    );
    let hops = raw(format!(
        "REGISTER sip:hims.net SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.20;branch=z9hG4bKh\r\nFrom: <{ALICE}>;tag=1\r\nTo: <{ALICE}>\r\nCall-ID: h\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 0\r\nContact: <sip:a@b>\r\nContent-Length: 0\r\n\r\n"
    ));
    assert_eq!(
        ims_scscf::answer(&r, &events, &hops)
            .await
            .unwrap()
            .status(),
        Some(483)
    );
    let garbage = raw(format!(
        "REGISTER sip:hims.net SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.20;branch=z9hG4bKg\r\nFrom: <{ALICE}>;tag=1\r\nTo: <{ALICE}>\r\nCall-ID: g\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ));
    assert_eq!(
        ims_scscf::answer(&r, &events, &garbage)
            .await
            .unwrap()
            .status(),
        Some(400)
    );

    // max_expires: a very long interval is cut down to 3600.
    let mut usim = usim();
    let ok = aka_register(
        &r,
        &mut ue,
        &mut usim,
        Qop::Auth,
        &[("Contact", "<sip:alice@10.0.0.2:5060>;expires=999999")],
    )
    .await;
    assert_eq!(ok.status(), Some(200), "{ok}");
    assert_eq!(
        values(&ok, HeaderName::Contact),
        ["<sip:alice@10.0.0.2:5060>;expires=3600"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn binding_expiry_sends_timeout_deregistration() {
    let lab = lab().await;
    let r = lab.registrar().await;
    let mut events = r.subscribe();
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>;expires=2");
    let mut usim = usim();
    let ok = aka_register(&r, &mut ue, &mut usim, Qop::Auth, &[]).await;
    assert_eq!(ok.status(), Some(200), "{ok}");
    assert_eq!(next_event(&mut events).await.kind, RegEventKind::Registered);
    assert_eq!(lab.hss_view(ALICE).await.0, 1);
    // The timer removes it within a second or so of its expiry.
    let ev = next_event(&mut events).await;
    assert_eq!(ev.kind, RegEventKind::Expired);
    assert_eq!(ev.contacts, ["sip:alice@10.0.0.2:5060"]);
    assert!(ev.contacts_left.is_empty());
    assert!(r.registration(ALICE).is_none());
    // SAR TIMEOUT_DEREGISTRATION reached the HSS (it clears the state and the S-CSCF).
    assert_eq!(lab.hss_view(ALICE).await, (0, None));
    assert!(
        lab_store(&lab)
            .await
            .registration(ALICE)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn challenges_expire_after_reg_await_auth() {
    let lab = lab().await;
    let mut cfg = lab.config();
    cfg.reg_await_auth_seconds = 1;
    let r = lab.registrar_with(cfg).await;
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>");
    let mut usim = usim();
    let first = r
        .handle_register(&ue.register(Some(ue.initial_auth()), &[]))
        .await;
    let (realm, nonce, alg, _, _, _) = challenge(&first);
    let (res, _, _) = run_usim(&mut usim, &nonce);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    // SAR AUTHENTICATION_TIMEOUT: the HSS forgot the S-CSCF the MAR recorded, and says so.
    assert_eq!(lab.hss_view(ALICE).await, (0, None));
    assert_eq!(last_auth(&lab, ALICE_IMPI), ("timeout".into(), 0));
    // The right answer, too late: a new challenge.
    let auth = answer(ALICE_IMPI, &realm, &nonce, &alg, Qop::Auth, &res);
    let late = r.handle_register(&ue.register(Some(auth), &[])).await;
    assert_eq!(late.status(), Some(401), "{late}");
}

#[tokio::test(flavor = "multi_thread")]
async fn registrations_survive_a_restart() {
    let lab = lab().await;
    let cfg = lab.config();
    survive_restart(&lab, cfg).await;
}

/// The same on PostgreSQL (several S-CSCFs sharing registrations); SKIP without it.
#[tokio::test(flavor = "multi_thread")]
async fn registrations_survive_a_restart_on_postgres() {
    let Some(pg) = ims_testkit::postgres::Postgres::start("scscf_restart_postgres") else {
        return;
    };
    let lab = lab().await;
    let mut cfg = lab.config();
    cfg.database = pg.url();
    survive_restart(&lab, cfg).await;
}

async fn survive_restart(lab: &Lab, cfg: Config) {
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>;expires=900");
    let mut usim = usim();
    {
        let r = lab.registrar_with(cfg.clone()).await;
        let ok = aka_register(&r, &mut ue, &mut usim, Qop::Auth, &[]).await;
        assert_eq!(ok.status(), Some(200), "{ok}");
    }
    // The first registrar is gone (its tasks end with it); a new one on the same database.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = lab.registrar_with(cfg.clone()).await;
    let reg = r.registration(ALICE_TEL).expect("restored from the store");
    assert_eq!(reg.impi, ALICE_IMPI);
    assert_eq!(reg.associated_uris, [ALICE, ALICE_TEL]);
    assert_eq!(reg.bindings.len(), 1);
    assert_eq!(reg.bindings[0].contact_uri, "sip:alice@10.0.0.2:5060");
    assert_eq!(reg.bindings[0].path, [PATH]);
    assert_eq!(r.registrations().len(), 1);
    // And it serves the user: a vouched refresh goes through (SAR RE_REGISTRATION).
    let refresh = r
        .handle_register(&ue.register(Some(ue.vouched_auth()), &[]))
        .await;
    assert_eq!(refresh.status(), Some(200), "{refresh}");
    let contact = values(&refresh, HeaderName::Contact);
    assert_eq!(contact, ["<sip:alice@10.0.0.2:5060>;expires=900"]);

    // A UE caught by a restart between its 401 and its answer: the new registrar never
    // issued that nonce, so it challenges afresh (not a 500), and the fresh answer works.
    let mut bob = Ue::new(BOB_IMPI, BOB, "<sip:bob@10.0.0.3:5060>");
    let (realm, nonce, alg) = {
        let before = lab.registrar_with(cfg.clone()).await;
        let first = before
            .handle_register(&bob.register(Some(bob.initial_auth()), &[]))
            .await;
        let (realm, nonce, alg, _, _, _) = challenge(&first);
        (realm, nonce, alg)
    };
    drop(r);
    let after = lab.registrar_with(cfg).await;
    let late = answer(
        BOB_IMPI,
        &realm,
        &nonce,
        &alg,
        Qop::Auth,
        BOB_PASSWORD.as_bytes(),
    );
    let again = after.handle_register(&bob.register(Some(late), &[])).await;
    assert_eq!(again.status(), Some(401), "{again}");
    let (realm, nonce2, alg, _, _, _) = challenge(&again);
    assert_ne!(nonce, nonce2);
    let fresh = answer(
        BOB_IMPI,
        &realm,
        &nonce2,
        &alg,
        Qop::Auth,
        BOB_PASSWORD.as_bytes(),
    );
    let ok = after.handle_register(&bob.register(Some(fresh), &[])).await;
    assert_eq!(ok.status(), Some(200), "{ok}");
}

/// The HSS's view of a subscriber (GET /v1/subscribers/{impi}).
fn admin_subscriber(admin: SocketAddr, impi: &str) -> serde_json::Value {
    let mut resp = ureq::get(&format!("http://{admin}/v1/subscribers/{impi}"))
        .call()
        .unwrap();
    serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
}

/// (outcome, failures in a row) of the HSS's last authentication of `impi`.
fn last_auth(lab: &Lab, impi: &str) -> (String, u64) {
    let v = admin_subscriber(lab.admin, impi);
    let a = &v["last_authentication"];
    assert_eq!(a["scscf"], NAME, "{v}");
    (
        a["outcome"].as_str().unwrap_or("none").to_owned(),
        a["failures_in_a_row"].as_u64().unwrap(),
    )
}

/// The log lines of what runs on this test's thread (the awaited `handle_register` calls),
/// while the guard lives.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(logs.clone())
            .finish();
        (logs.clone(), tracing::subscriber::set_default(sub))
    }

    /// The lines written since the last call.
    fn take(&self) -> Vec<String> {
        let bytes = std::mem::take(&mut *self.0.lock().unwrap());
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// The one line among `lines` that contains `needle` (panics on none or several).
fn one_line<'a>(lines: &'a [String], needle: &str) -> &'a str {
    let hits: Vec<&String> = lines.iter().filter(|l| l.contains(needle)).collect();
    assert_eq!(hits.len(), 1, "one line with `{needle}` in {lines:#?}");
    hits[0]
}

/// A challenge answered with `response` as it is (no digest computed).
fn raw_answer(impi: &str, realm: &str, nonce: &str, alg: &str, response: &str) -> String {
    format!(
        r#"Digest username="{impi}", realm="{realm}", uri="sip:hims.net", nonce="{nonce}", response="{response}", algorithm={alg}, qop=auth, nc=00000001, cnonce="0a4f113b""#
    )
}

/// Each wrong answer is explained in one log line naming its likely cause, and the HSS
/// records the outcome (SAR AUTHENTICATION_FAILURE) for `imsctl subscriber show`.
#[tokio::test(flavor = "multi_thread")]
async fn failed_authentications_are_explained_and_recorded_at_the_hss() {
    let lab = lab().await;
    let r = lab.registrar().await;
    let (logs, _guard) = Logs::capture();
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>");
    let mut usim = usim();

    // 1. The USIM rejected AUTN and the UE says so with an empty response.
    let first = r
        .handle_register(&ue.register(Some(ue.initial_auth()), &[]))
        .await;
    let (realm, nonce, alg, _, _, _) = challenge(&first);
    assert_eq!(last_auth(&lab, ALICE_IMPI), ("challenged".into(), 0));
    logs.take();
    let empty = raw_answer(ALICE_IMPI, &realm, &nonce, &alg, "");
    let resp = r.handle_register(&ue.register(Some(empty), &[])).await;
    assert_eq!(resp.status(), Some(403), "{resp}");
    let lines = logs.take();
    let line = one_line(&lines, "USIM rejected AUTN (MAC failure)");
    assert!(
        line.contains(&format!("{ALICE_IMPI}: UE sent an empty AKA response"))
            && line.contains("K or OPc at the HSS differ from the SIM's")
            && line.contains(r#"cause="autn_rejected""#)
            && line.contains("failures=1"),
        "{line}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("REGISTER refused")),
        "one line per failure: {lines:#?}"
    );
    assert_eq!(last_auth(&lab, ALICE_IMPI), ("failure".into(), 1));

    // 2. The same, the RFC 3310 way: a digest of the empty password, without auts.
    let again = r
        .handle_register(&ue.register(Some(ue.initial_auth()), &[]))
        .await;
    let (realm, nonce, alg, _, _, _) = challenge(&again);
    let empty_password = answer(
        ALICE_IMPI,
        &realm,
        &nonce,
        &alg,
        Qop::Auth,
        digest_aka::RESYNC_PASSWORD,
    );
    logs.take();
    let resp = r
        .handle_register(&ue.register(Some(empty_password), &[]))
        .await;
    assert_eq!(resp.status(), Some(403), "{resp}");
    let lines = logs.take();
    assert!(
        one_line(&lines, "USIM rejected AUTN").contains("failures=2"),
        "{lines:#?}"
    );
    assert_eq!(last_auth(&lab, ALICE_IMPI), ("failure".into(), 2));

    // 3. A RES that is not XRES.
    logs.take();
    let resp = answer_alice_wrongly(&r, &mut ue, b"not-res!").await;
    assert_eq!(resp.status(), Some(403), "{resp}");
    let lines = logs.take();
    let line = one_line(&lines, "wrong RES");
    assert!(
        line.contains("K/OPc mismatch") && line.contains(r#"cause="wrong_res""#),
        "{line}"
    );
    assert_eq!(last_auth(&lab, ALICE_IMPI), ("failure".into(), 3));

    // 4. A digest user with the wrong password.
    let mut bob = Ue::new(BOB_IMPI, BOB, "<sip:bob@10.0.0.3:5060>");
    let c = r
        .handle_register(&bob.register(Some(bob.initial_auth()), &[]))
        .await;
    let (realm, nonce, alg, _, _, qop) = challenge(&c);
    assert_eq!(qop, "auth");
    let wrong = answer(BOB_IMPI, &realm, &nonce, &alg, Qop::Auth, b"not-secret");
    logs.take();
    let resp = r.handle_register(&bob.register(Some(wrong), &[])).await;
    assert_eq!(resp.status(), Some(403), "{resp}");
    one_line(&logs.take(), "the phone's password differs");
    assert_eq!(last_auth(&lab, BOB_IMPI), ("failure".into(), 1));

    // 5. Alice gets it right: the HSS records the success and the run of failures ends.
    let ok = aka_register(&r, &mut ue, &mut usim, Qop::Auth, &[]).await;
    assert_eq!(ok.status(), Some(200), "{ok}");
    assert_eq!(last_auth(&lab, ALICE_IMPI), ("success".into(), 0));
    // A re-registration the P-CSCF vouches for is no authentication: nothing changes.
    let at = admin_subscriber(lab.admin, ALICE_IMPI)["last_authentication"]["at"].clone();
    let refresh = r
        .handle_register(&ue.register(Some(ue.vouched_auth()), &[]))
        .await;
    assert_eq!(refresh.status(), Some(200), "{refresh}");
    let after = admin_subscriber(lab.admin, ALICE_IMPI);
    assert_eq!(after["last_authentication"]["outcome"], "success");
    assert_eq!(after["last_authentication"]["at"], at);
}

/// `auth_failures_before_lockout` wrong answers in a row lock the IMPI for
/// `auth_lockout_seconds`: 403 before any MAR, one log line; another user and the locked
/// user's integrity-protected re-registrations still pass; the lockout ends by itself and a
/// right answer then registers.
#[tokio::test(flavor = "multi_thread")]
async fn repeated_wrong_answers_lock_the_impi_out_for_a_while() {
    let lab = lab().await;
    let mut cfg = lab.config();
    cfg.auth_failures_before_lockout = 3;
    cfg.auth_lockout_seconds = 2;
    let r = lab.registrar_with(cfg).await;
    let (logs, _guard) = Logs::capture();
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>");
    let mut usim = usim();
    let ok = aka_register(&r, &mut ue, &mut usim, Qop::Auth, &[]).await;
    assert_eq!(ok.status(), Some(200), "{ok}");

    // Someone answers alice's challenges wrong, three times.
    for n in 1..=3 {
        logs.take();
        let resp = answer_alice_wrongly(&r, &mut ue, b"guess!!!").await;
        assert_eq!(resp.status(), Some(403), "{resp}");
        let lines = logs.take();
        let line = one_line(&lines, "wrong RES");
        assert_eq!(line.contains("locked out for 2 s"), n == 3, "{line}");
    }
    assert_eq!(last_auth(&lab, ALICE_IMPI), ("failure".into(), 3));
    let m = r.render_metrics((0, 0));
    assert!(
        m.contains("ims_scscf_auth_failures_total{cause=\"wrong_res\"} 3")
            && m.contains("ims_scscf_auth_lockouts_total 1"),
        "{m}"
    );

    // Locked: 403 at once, one line, and no MAR (the HSS would record "challenged").
    let locked = r
        .handle_register(&ue.register(Some(ue.initial_auth()), &[]))
        .await;
    assert_eq!(locked.status(), Some(403), "{locked}");
    assert!(reason(&locked).contains("locked"), "{locked}");
    let lines = logs.take();
    assert!(
        one_line(&lines, "locked out for another").contains(ALICE_IMPI),
        "{lines:#?}"
    );
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(last_auth(&lab, ALICE_IMPI), ("failure".into(), 3));
    // Alice stays registered, and her integrity-protected re-registration passes.
    assert!(r.registration(ALICE).is_some());
    let refresh = r
        .handle_register(&ue.register(Some(ue.vouched_auth()), &[]))
        .await;
    assert_eq!(refresh.status(), Some(200), "{refresh}");
    // Another user is not affected.
    let mut bob = Ue::new(BOB_IMPI, BOB, "<sip:bob@10.0.0.3:5060>");
    let c = r
        .handle_register(&bob.register(Some(bob.initial_auth()), &[]))
        .await;
    assert_eq!(c.status(), Some(401), "{c}");

    // The lockout ends by itself: a challenge again, and the right answer registers.
    let t = std::time::Instant::now();
    let fresh = loop {
        let resp = r
            .handle_register(&ue.register(Some(ue.initial_auth()), &[]))
            .await;
        if resp.status() != Some(403) {
            break resp;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "still locked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "unlocked too early"
    );
    let (realm, nonce, alg, _, _, _) = challenge(&fresh);
    let (res, _, _) = run_usim(&mut usim, &nonce);
    let auth = answer(ALICE_IMPI, &realm, &nonce, &alg, Qop::Auth, &res);
    let ok = r.handle_register(&ue.register(Some(auth), &[])).await;
    assert_eq!(ok.status(), Some(200), "{ok}");
    assert_eq!(last_auth(&lab, ALICE_IMPI), ("success".into(), 0));
}

/// The S-CSCF's admin API lists what it holds: the registration, its implicit set, each
/// contact with until when, its Path and the P-CSCF (the Path entry nearest the UE).
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_lists_the_registrations_held() {
    let lab = lab().await;
    let mut cfg = lab.config();
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let s = ims_scscf::Scscf::start(cfg).await.unwrap();
    assert!(s.registrar().wait_diameter(Duration::from_secs(10)).await);
    let admin = s.admin_addr().expect("admin_listen is set");
    let r = s.registrar().clone();
    tokio::spawn(s.run(std::future::pending()));
    let get = move |path: &str| -> serde_json::Value {
        let mut resp = ureq::get(&format!("http://{admin}{path}")).call().unwrap();
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
    };
    let empty = tokio::task::spawn_blocking(move || get("/v1/registrations"))
        .await
        .unwrap();
    assert_eq!(empty["registrations"], serde_json::json!([]), "{empty}");
    assert_eq!(empty["scscf"], NAME);

    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>;expires=300");
    let mut usim = usim();
    let started = std::time::Instant::now();
    let ok = aka_register(&r, &mut ue, &mut usim, Qop::Auth, &[]).await;
    let took = started.elapsed().as_secs_f64();
    assert_eq!(ok.status(), Some(200), "{ok}");
    let before = std::time::SystemTime::now();
    let v = tokio::task::spawn_blocking(move || get("/v1/registrations"))
        .await
        .unwrap();
    let regs = v["registrations"].as_array().unwrap();
    assert_eq!(regs.len(), 1, "{v}");
    let reg = &regs[0];
    assert_eq!(reg["impu"], ALICE);
    assert_eq!(reg["impi"], ALICE_IMPI);
    assert_eq!(
        reg["associated_uris"],
        serde_json::json!([ALICE, ALICE_TEL])
    );
    let c = &reg["contacts"][0];
    assert_eq!(c["contact"], "sip:alice@10.0.0.2:5060");
    assert_eq!(c["path"], serde_json::json!([PATH]));
    assert_eq!(c["pcscf"], "pcscf1.vims.net");
    let left = c["expires_in"].as_i64().unwrap();
    assert!((299..=300).contains(&left), "{v}");
    // Until when: RFC 3339, 300 s from now (to the second).
    let until = c["until"].as_str().unwrap();
    let around = |d: u64| ims_net::clock::rfc3339(before + Duration::from_secs(d));
    assert!(
        [around(299), around(300), around(301)]
            .iter()
            .any(|t| t == until),
        "{until}"
    );
    assert_eq!(reg["until"], c["until"]);
    // The metrics: the 401 and the 200, one registration held, the Cx answers.
    let text = tokio::task::spawn_blocking(move || {
        let mut resp = ureq::get(&format!("http://{admin}/metrics"))
            .call()
            .unwrap();
        resp.body_mut().read_to_string().unwrap()
    })
    .await
    .unwrap();
    for want in [
        "ims_scscf_register_total{status=\"401\"} 1",
        "ims_scscf_register_total{status=\"200\"} 1",
        "ims_scscf_register_seconds_count 2",
        "ims_scscf_registrations 1",
        "ims_scscf_auth_lockouts_total 0",
        // One MAR (the challenge) and one SAR (the registration), both answered 2001.
        "ims_scscf_cx_answers_total{command=\"MAR\",result=\"2001\"} 1",
        "ims_scscf_cx_answers_total{command=\"SAR\",result=\"2001\"} 1",
    ] {
        assert!(text.lines().any(|l| l == want), "`{want}` in:\n{text}");
    }
    // Their round trips, each observed once, within the time the registration took.
    for command in ["MAR", "SAR"] {
        let value = |series: String| {
            sample(&text, &series).unwrap_or_else(|| panic!("no `{series}` in:\n{text}"))
        };
        let name = "ims_scscf_cx_request_seconds";
        let labels = format!("command=\"{command}\"");
        assert_eq!(value(format!("{name}_count{{{labels}}}")), 1.0, "{text}");
        let inf = value(format!("{name}_bucket{{{labels},le=\"+Inf\"}}"));
        assert_eq!(inf, 1.0, "{text}");
        let sum = value(format!("{name}_sum{{{labels}}}"));
        assert!(sum > 0.0 && sum <= took, "{sum} s of {took} s:\n{text}");
    }
}

/// The value of the sample `series` (its name and labels, exactly as rendered) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn admin_post(admin: SocketAddr, path: &str) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(&format!("http://{admin}{path}"))
        .send_empty()
        .unwrap();
    resp.body_mut().read_to_string().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn rtr_from_the_hss_removes_the_registration() {
    let lab = lab().await;
    let r = lab.registrar().await;
    let mut events = r.subscribe();
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>");
    let mut usim = usim();
    let ok = aka_register(&r, &mut ue, &mut usim, Qop::Auth, &[]).await;
    assert_eq!(ok.status(), Some(200), "{ok}");
    assert_eq!(next_event(&mut events).await.kind, RegEventKind::Registered);

    // PPR first: the HSS pushes the profile; we keep it (2001).
    let admin = lab.admin;
    let body = tokio::task::spawn_blocking(move || {
        admin_post(admin, &format!("/v1/subscribers/{ALICE_IMPI}/push-profile"))
    })
    .await
    .unwrap();
    assert!(body.contains("\"result_code\":2001"), "{body}");

    // RTR (administrative deregistration): the registration goes, RTA 2001.
    let body = tokio::task::spawn_blocking(move || {
        admin_post(admin, &format!("/v1/subscribers/{ALICE_IMPI}/deregister"))
    })
    .await
    .unwrap();
    assert!(body.contains("\"result_code\":2001"), "{body}");
    let ev = next_event(&mut events).await;
    assert_eq!(ev.kind, RegEventKind::Terminated);
    assert_eq!(ev.contacts, ["sip:alice@10.0.0.2:5060"]);
    assert!(r.registration(ALICE).is_none());
    assert!(r.registration(ALICE_TEL).is_none());
    assert!(
        lab_store(&lab)
            .await
            .registration(ALICE)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(lab.hss_view(ALICE).await, (0, None));
    // A PPR for someone no longer registered here: DIAMETER_ERROR_USER_UNKNOWN... but the HSS
    // only sends it to a serving S-CSCF, and there is none now.
    let body = tokio::task::spawn_blocking(move || {
        admin_post(admin, &format!("/v1/subscribers/{ALICE_IMPI}/push-profile"))
    })
    .await
    .unwrap();
    assert!(body.contains("no serving S-CSCF"), "{body}");
}

/// No connection to the HSS (nothing listens there): 503 with Retry-After at once, not a
/// wait; the UE comes back once the HSS does.
#[tokio::test(flavor = "multi_thread")]
async fn hss_down_is_503_with_retry_after_at_once() {
    let lab = lab().await;
    let mut cfg = lab.config();
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    cfg.diameter.hss = closed.local_addr().unwrap();
    drop(closed);
    let r = Registrar::start(cfg).await.unwrap();
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>");
    let t = std::time::Instant::now();
    let resp = r
        .handle_register(&ue.register(Some(ue.initial_auth()), &[]))
        .await;
    assert_eq!(resp.status(), Some(503), "{resp}");
    assert!(reason(&resp).contains("HSS unreachable"), "{resp}");
    let after: u32 = resp
        .header_str(HeaderName::RetryAfter)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!((5..=10).contains(&after), "{resp}");
    assert!(t.elapsed() < Duration::from_secs(1), "at once");
}

/// An HSS with no room answers 3004; the S-CSCF refuses with 503 and Retry-After at once.
#[tokio::test(flavor = "multi_thread")]
async fn hss_too_busy_is_503_with_retry_after() {
    let lab = lab_with(0).await;
    let r = lab.registrar().await;
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>");
    let t = std::time::Instant::now();
    let resp = r
        .handle_register(&ue.register(Some(ue.initial_auth()), &[]))
        .await;
    assert_eq!(resp.status(), Some(503), "{resp}");
    let after: u32 = resp
        .header_str(HeaderName::RetryAfter)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!((5..=10).contains(&after), "{resp}");
    assert!(t.elapsed() < Duration::from_secs(2), "refused at once");
}

#[test]
fn the_lab_configuration_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/lab/scscf.toml");
    let cfg: Config = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.sip_listen, "127.0.0.30:5060".parse().unwrap());
    assert_eq!(cfg.name, NAME);
    assert_eq!(cfg.host_port(), "scscf1.hims.net:5060");
    assert_eq!(
        (cfg.subscribe_min_expires, cfg.subscribe_max_expires),
        (60, 3600),
        "reg subscription limits default"
    );
    let mut bad = cfg.clone();
    bad.subscribe_min_expires = 7200;
    assert!(
        bad.validate()
            .unwrap_err()
            .contains("subscribe_min_expires")
    );
    let mut bad = cfg.clone();
    bad.min_expires = 7200;
    assert!(bad.validate().unwrap_err().contains("min_expires"));
    // The admin API (no authentication) on loopback only; the lockout needs a duration.
    assert_eq!(cfg.admin_listen, Some("127.0.0.30:8080".parse().unwrap()));
    let mut bad = cfg.clone();
    bad.admin_listen = Some("10.0.0.3:8080".parse().unwrap());
    assert!(
        bad.validate()
            .unwrap_err()
            .contains("not a loopback address")
    );
    let mut bad = cfg.clone();
    bad.auth_lockout_seconds = 0;
    assert!(bad.validate().unwrap_err().contains("auth_lockout_seconds"));
    bad.auth_failures_before_lockout = 0;
    bad.validate().unwrap();
    let mut bad = cfg;
    bad.name = "scscf1".into();
    assert!(bad.validate().is_err());
    assert!(toml::from_str::<Config>("sip_listen = \"127.0.0.1:5060\"\nbogus = 1").is_err());
}

// ----------------------------------------------------------------------------------------
// the reg event package (RFC 3680, TS 24.229 §5.4.2.1), through the daemon's SIP endpoint

/// The daemon on 127.0.0.1 port 0, serving until the test ends.
async fn daemon(cfg: Config) -> (SocketAddr, ims_scscf::RegEvents) {
    let s = ims_scscf::Scscf::start(cfg).await.unwrap();
    assert!(
        s.registrar().wait_diameter(Duration::from_secs(10)).await,
        "CER/CEA with the HSS"
    );
    let addr = s.local_addr();
    let events = s.reg_events().clone();
    tokio::spawn(s.run(std::future::pending()));
    (addr, events)
}

/// The UE (or P-CSCF) side on a real UDP socket. It answers every NOTIFY at once (200, or
/// `notify_status`) and keeps it for the test; retransmissions are answered again, not kept.
struct Peer {
    sock: tokio::net::UdpSocket,
    addr: SocketAddr,
    scscf: SocketAddr,
    n: u32,
    responses: Vec<Message>,
    notifies: std::collections::VecDeque<Message>,
    answered: std::collections::HashSet<String>,
    notify_status: u16,
}

impl Peer {
    async fn new(scscf: SocketAddr) -> Peer {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        Peer {
            sock,
            addr,
            scscf,
            n: 0,
            responses: Vec::new(),
            notifies: Default::default(),
            answered: Default::default(),
            notify_status: 200,
        }
    }

    /// Reads one datagram; false when none came within `wait`.
    async fn pump(&mut self, wait: Duration) -> bool {
        let mut buf = vec![0u8; 65536];
        let Ok(r) = tokio::time::timeout(wait, self.sock.recv_from(&mut buf)).await else {
            return false;
        };
        let (n, from) = r.unwrap();
        buf.truncate(n);
        let m = Message::parse(Bytes::from(buf)).unwrap();
        if m.is_request() {
            assert_eq!(m.method_str(), Some("NOTIFY"), "{m}");
            let branch = m.top_via().unwrap().branch().unwrap().to_owned();
            let status = self.notify_status;
            let reason = if status == 200 {
                "OK"
            } else {
                "Call/Transaction Does Not Exist"
            };
            let resp = ims_sip::response_to(&m, status, reason, None).unwrap();
            self.sock.send_to(&resp.to_bytes(), from).await.unwrap();
            if self.answered.insert(branch) {
                self.notifies.push_back(m);
            }
        } else {
            self.responses.push(m);
        }
        true
    }

    /// Sends a request (our Via on top, rport) and waits for its final response.
    async fn request(&mut self, mut m: Message) -> Message {
        self.n += 1;
        let branch = format!("z9hG4bKpeer{}x{}", self.addr.port(), self.n);
        m.prepend_header(
            "Via",
            &format!("SIP/2.0/UDP {};branch={branch};rport", self.addr),
        )
        .unwrap();
        self.sock.send_to(&m.to_bytes(), self.scscf).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(i) = self
                .responses
                .iter()
                .position(|r| r.top_via().unwrap().branch() == Some(branch.as_str()))
            {
                let r = self.responses.remove(i);
                if r.status().unwrap() >= 200 {
                    return r;
                }
                continue;
            }
            assert!(std::time::Instant::now() < deadline, "no response to {m}");
            self.pump(Duration::from_millis(200)).await;
        }
    }

    /// The next NOTIFY (already answered).
    async fn notify(&mut self) -> Message {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(n) = self.notifies.pop_front() {
                return n;
            }
            assert!(std::time::Instant::now() < deadline, "no NOTIFY came");
            self.pump(Duration::from_millis(200)).await;
        }
    }

    /// No new NOTIFY within `wait` (answering whatever comes meanwhile).
    async fn quiet(&mut self, wait: Duration) {
        let end = std::time::Instant::now() + wait;
        while std::time::Instant::now() < end {
            self.pump(Duration::from_millis(50)).await;
        }
        assert!(
            self.notifies.is_empty(),
            "unexpected NOTIFY: {}",
            self.notifies[0]
        );
    }
}

/// Full AKA registration through the daemon: 401, then the answer.
async fn register_over(peer: &mut Peer, ue: &mut Ue, usim: &mut Usim) -> Message {
    let resp = peer
        .request(ue.register(Some(ue.initial_auth()), &[]))
        .await;
    let (realm, nonce, alg, _, _, _) = challenge(&resp);
    let (res, _, _) = run_usim(usim, &nonce);
    let auth = answer(&ue.impi, &realm, &nonce, &alg, Qop::Auth, &res);
    peer.request(ue.register(Some(auth), &[])).await
}

/// A re-registration (or deregistration, 0) the P-CSCF vouches for, through the daemon.
async fn reregister_over(peer: &mut Peer, ue: &mut Ue, expires: u32) -> Message {
    let contact = format!("<sip:alice@10.0.0.2:5060>;expires={expires}");
    let resp = peer
        .request(ue.register(Some(ue.vouched_auth()), &[("Contact", &contact)]))
        .await;
    assert_eq!(resp.status(), Some(200), "{resp}");
    resp
}

/// A SUBSCRIBE dialog from the subscriber's side.
struct Sub {
    call_id: String,
    cseq: u32,
    ruri: String,
    from: String,
    to_tag: Option<String>,
    contact: Option<String>,
    headers: Vec<(&'static str, String)>,
}

impl Sub {
    fn new(call_id: &str, ruri: &str, from: &str, contact: &str) -> Sub {
        Sub {
            call_id: call_id.into(),
            cseq: 0,
            ruri: ruri.into(),
            from: from.into(),
            to_tag: None,
            contact: Some(contact.into()),
            headers: Vec::new(),
        }
    }

    fn asserting(mut self, pai: &str) -> Sub {
        self.headers
            .push(("P-Asserted-Identity", format!("<{pai}>")));
        self
    }

    fn subscriber_tag(&self) -> String {
        format!("sub-{}", self.call_id)
    }

    fn request(
        &mut self,
        event: Option<&str>,
        expires: Option<u32>,
        extra: &[(&str, &str)],
    ) -> Message {
        self.cseq += 1;
        let to = match &self.to_tag {
            Some(t) => format!("<{}>;tag={t}", self.ruri),
            None => format!("<{}>", self.ruri),
        };
        let mut b = RequestBuilder::new("SUBSCRIBE", &self.ruri)
            .header(
                "From",
                &format!("<{}>;tag={}", self.from, self.subscriber_tag()),
            )
            .header("To", &to)
            .header("Call-ID", &self.call_id)
            .header("CSeq", &format!("{} SUBSCRIBE", self.cseq))
            .header("Max-Forwards", "70");
        if let Some(c) = &self.contact {
            b = b.header("Contact", c);
        }
        if let Some(e) = event {
            b = b.header("Event", e);
        }
        if let Some(e) = expires {
            b = b.header("Expires", &e.to_string());
        }
        for (n, v) in &self.headers {
            b = b.header(n, v);
        }
        for (n, v) in extra {
            b = b.header(n, v);
        }
        b.build().unwrap()
    }

    fn subscribe(&mut self, expires: u32) -> Message {
        self.request(Some("reg"), Some(expires), &[])
    }

    /// The 200 to the first SUBSCRIBE: the dialog takes its To tag.
    fn accepted(&mut self, resp: &Message) {
        assert_eq!(resp.status(), Some(200), "{resp}");
        let tag = resp.to_addr().unwrap().tag().expect("To tag on the 200");
        self.to_tag = Some(tag.to_owned());
    }
}

/// `Subscription-State`: (state, reason, expires).
fn sub_state(n: &Message) -> (String, Option<String>, Option<u32>) {
    let v = n.header_str(HeaderName::SubscriptionState).unwrap();
    let mut parts = v.split(';').map(str::trim);
    let state = parts.next().unwrap().to_owned();
    let (mut reason, mut expires) = (None, None);
    for p in parts {
        if let Some(r) = p.strip_prefix("reason=") {
            reason = Some(r.to_owned());
        } else if let Some(e) = p.strip_prefix("expires=") {
            expires = Some(e.parse().unwrap());
        }
    }
    (state, reason, expires)
}

#[derive(Debug, Default)]
struct RegInfo {
    version: u32,
    state: String,
    regs: Vec<Registration>,
}

#[derive(Debug, Default)]
struct Registration {
    aor: String,
    id: String,
    state: String,
    contacts: Vec<RegContact>,
}

#[derive(Debug, Default, Clone)]
struct RegContact {
    id: String,
    state: String,
    event: String,
    expires: u32,
    uri: String,
}

fn xml_attrs(tag: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].rsplit(' ').next().unwrap().trim().to_owned();
        let after = &rest[eq + 2..];
        let end = after.find('"').expect("closing quote");
        out.insert(name, after[..end].to_owned());
        rest = &after[end + 1..];
    }
    out
}

/// A minimal XML reader for the NOTIFY body: checks that every element closes in order and
/// reads the reginfo elements and attributes we assert on.
fn reginfo(n: &Message) -> RegInfo {
    assert_eq!(
        n.header_str(HeaderName::ContentType),
        Some("application/reginfo+xml")
    );
    let xml = std::str::from_utf8(n.body()).unwrap();
    assert!(xml.starts_with("<?xml version=\"1.0\""), "{xml}");
    let mut doc = RegInfo::default();
    let mut stack: Vec<String> = Vec::new();
    let mut rest = xml;
    let mut roots = 0;
    while let Some(lt) = rest.find('<') {
        let gt = rest[lt..].find('>').expect("tag closes") + lt;
        let tag = &rest[lt + 1..gt];
        let text = &rest[gt + 1..];
        rest = text;
        if tag.starts_with('?') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name), "{xml}");
            continue;
        }
        let name = tag.split([' ', '/']).next().unwrap().to_owned();
        let a = xml_attrs(tag);
        match name.as_str() {
            "reginfo" => {
                roots += 1;
                assert!(stack.is_empty(), "{xml}");
                assert_eq!(a["xmlns"], "urn:ietf:params:xml:ns:reginfo");
                doc.version = a["version"].parse().unwrap();
                doc.state = a["state"].clone();
            }
            "registration" => {
                assert_eq!(stack, ["reginfo"], "{xml}");
                doc.regs.push(Registration {
                    aor: a["aor"].clone(),
                    id: a["id"].clone(),
                    state: a["state"].clone(),
                    contacts: Vec::new(),
                });
            }
            "contact" => {
                assert_eq!(stack, ["reginfo", "registration"], "{xml}");
                doc.regs.last_mut().unwrap().contacts.push(RegContact {
                    id: a["id"].clone(),
                    state: a["state"].clone(),
                    event: a["event"].clone(),
                    expires: a["expires"].parse().unwrap(),
                    uri: String::new(),
                });
            }
            "uri" => {
                assert_eq!(stack, ["reginfo", "registration", "contact"], "{xml}");
                let uri = &text[..text.find('<').unwrap()];
                let c = doc.regs.last_mut().unwrap().contacts.last_mut().unwrap();
                c.uri = uri.to_owned();
            }
            other => panic!("unexpected element {other} in {xml}"),
        }
        if !tag.ends_with('/') {
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "unclosed elements {stack:?} in {xml}");
    assert_eq!(roots, 1);
    doc
}

fn aors(doc: &RegInfo) -> Vec<&str> {
    doc.regs.iter().map(|r| r.aor.as_str()).collect()
}

/// The one contact every registration of the document lists (the same in each).
fn only_contact(doc: &RegInfo) -> RegContact {
    let c = doc.regs[0].contacts.clone();
    assert_eq!(c.len(), 1, "{doc:?}");
    for r in &doc.regs {
        assert_eq!(r.contacts.len(), 1, "{doc:?}");
        assert_eq!(
            (
                &r.contacts[0].state,
                &r.contacts[0].event,
                r.contacts[0].expires,
                &r.contacts[0].uri
            ),
            (&c[0].state, &c[0].event, c[0].expires, &c[0].uri)
        );
    }
    c[0].clone()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reg_event_subscription_follows_the_registration() {
    let lab = lab().await;
    let (scscf, events) = daemon(lab.config()).await;
    let mut peer = Peer::new(scscf).await;
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>;expires=600");
    let mut usim = usim();
    let ok = register_over(&mut peer, &mut ue, &mut usim).await;
    assert_eq!(ok.status(), Some(200), "{ok}");

    // The UE subscribes to its own registration, through a proxy that record-routes.
    let rr = format!("<sip:{};lr>", peer.addr);
    let mut sub = Sub::new(
        "ue-reg-1",
        ALICE,
        ALICE,
        &format!("<sip:alice@{}>", peer.addr),
    )
    .asserting(ALICE);
    sub.headers.push(("Record-Route", rr.clone()));
    let resp = peer.request(sub.subscribe(600_000)).await;
    sub.accepted(&resp);
    assert_eq!(resp.header_str(HeaderName::Expires), Some("3600"), "capped");
    assert_eq!(
        resp.header_str(HeaderName::Contact),
        Some(format!("<sip:scscf1.hims.net:{}>", scscf.port()).as_str())
    );
    assert_eq!(events.subscription_count(), 1);
    assert_eq!(events.resources(), [ALICE]);

    // The first NOTIFY: in the dialog, along the route set, the full state.
    let n = peer.notify().await;
    assert_eq!(
        n.request_uri_str(),
        Some(format!("sip:alice@{}", peer.addr).as_str())
    );
    assert_eq!(values(&n, HeaderName::Route), [rr.as_str()]);
    assert_eq!(n.call_id().unwrap(), "ue-reg-1");
    assert_eq!(n.from_addr().unwrap().uri_str, ALICE);
    assert_eq!(n.from_addr().unwrap().tag(), sub.to_tag.as_deref());
    assert_eq!(
        n.to_addr().unwrap().tag(),
        Some(sub.subscriber_tag().as_str())
    );
    assert_eq!(n.header_str(HeaderName::Event), Some("reg"));
    let (state, reason, expires) = sub_state(&n);
    assert_eq!((state.as_str(), reason), ("active", None));
    assert!((3590..=3600).contains(&expires.unwrap()), "{expires:?}");
    let cseq1 = n.cseq().unwrap().seq;
    let doc = reginfo(&n);
    assert_eq!((doc.version, doc.state.as_str()), (0, "full"));
    // Every identity of the implicit set, the barred one left out.
    assert_eq!(aors(&doc), [ALICE, ALICE_TEL]);
    assert!(doc.regs.iter().all(|r| r.state == "active"));
    assert_ne!(doc.regs[0].id, doc.regs[1].id);
    assert_ne!(doc.regs[0].contacts[0].id, doc.regs[1].contacts[0].id);
    let c = only_contact(&doc);
    assert_eq!(
        (c.state.as_str(), c.event.as_str(), c.uri.as_str()),
        ("active", "registered", "sip:alice@10.0.0.2:5060")
    );
    assert!((595..=600).contains(&c.expires), "{c:?}");
    let ids: Vec<String> = doc.regs.iter().map(|r| r.id.clone()).collect();

    // A re-registration for longer: "refreshed" with the new expiry.
    reregister_over(&mut peer, &mut ue, 900).await;
    let n = peer.notify().await;
    assert!(n.cseq().unwrap().seq > cseq1);
    let doc = reginfo(&n);
    assert_eq!(doc.version, 1);
    assert_eq!(
        doc.regs.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        ids,
        "registration ids are stable"
    );
    let c = only_contact(&doc);
    assert_eq!(
        (c.state.as_str(), c.event.as_str()),
        ("active", "refreshed")
    );
    assert!((895..=900).contains(&c.expires), "{c:?}");
    // ... and for shorter: "shortened".
    reregister_over(&mut peer, &mut ue, 300).await;
    let doc = reginfo(&peer.notify().await);
    assert_eq!(doc.version, 2);
    let c = only_contact(&doc);
    assert_eq!(
        (c.event.as_str(), c.expires > 290 && c.expires <= 300),
        ("shortened", true)
    );

    // A refresh of the subscription in its dialog: 200 with the new interval, a full NOTIFY.
    let resp = peer.request(sub.subscribe(1200)).await;
    assert_eq!(resp.status(), Some(200), "{resp}");
    assert_eq!(resp.header_str(HeaderName::Expires), Some("1200"));
    assert_eq!(resp.to_addr().unwrap().tag(), sub.to_tag.as_deref());
    let n = peer.notify().await;
    let (state, _, expires) = sub_state(&n);
    assert_eq!(state, "active");
    assert!((1190..=1200).contains(&expires.unwrap()), "{expires:?}");
    assert_eq!(reginfo(&n).version, 3);
    assert_eq!(events.subscription_count(), 1);

    // Deregistration: the last NOTIFY, everything terminated.
    reregister_over(&mut peer, &mut ue, 0).await;
    let n = peer.notify().await;
    assert_eq!(
        sub_state(&n),
        ("terminated".into(), Some("noresource".into()), None)
    );
    let doc = reginfo(&n);
    assert_eq!(doc.version, 4);
    assert_eq!(aors(&doc), [ALICE, ALICE_TEL]);
    assert!(doc.regs.iter().all(|r| r.state == "terminated"), "{doc:?}");
    let c = only_contact(&doc);
    assert_eq!(
        (c.state.as_str(), c.event.as_str(), c.uri.as_str()),
        ("terminated", "unregistered", "sip:alice@10.0.0.2:5060")
    );
    wait_until("the subscription is gone", || {
        events.subscription_count() == 0
    })
    .await;
    // The dialog is gone (481), and nothing is registered to subscribe to (480).
    let resp = peer.request(sub.subscribe(600)).await;
    assert_eq!(resp.status(), Some(481), "{resp}");
    let mut again = Sub::new(
        "ue-reg-2",
        ALICE,
        ALICE,
        &format!("<sip:alice@{}>", peer.addr),
    )
    .asserting(ALICE);
    let resp = peer.request(again.subscribe(600)).await;
    assert_eq!(resp.status(), Some(480), "{resp}");
    peer.quiet(Duration::from_millis(500)).await;
}

/// A P-CSCF whose Contact is a host name and whose SUBSCRIBE came through another hop (as
/// Kamailio's P-CSCF subscribes: to the public identity, through the I-CSCF, with Contact
/// `sip:<its FQDN>:5060`): the NOTIFYs go to that name resolved through the S-CSCF's `dns`,
/// not back to the neighbour the SUBSCRIBE came from.
#[tokio::test(flavor = "multi_thread")]
async fn reg_event_notify_goes_to_a_contact_host_name_through_dns() {
    let zones: ims_dns::Config = toml::from_str(
        r#"listen = ["127.0.0.1:0"]
ttl = 60
[[zone]]
origin = "vims.net"
records = [ { type = "A", name = "pcscf9", address = "127.0.0.1" } ]
"#,
    )
    .unwrap();
    let dns = ims_dns::DnsServer::start(&zones).await.unwrap();
    let dns_addr = dns.local_addrs()[0];
    tokio::spawn(dns.run_until(std::future::pending()));
    let lab = lab().await;
    let mut cfg = lab.config();
    cfg.dns = vec![dns_addr];
    let (scscf, events) = daemon(cfg).await;
    // `hop` plays the I-CSCF the requests come through; `pcscf` only ever receives.
    let mut hop = Peer::new(scscf).await;
    let mut pcscf = Peer::new(scscf).await;
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>;expires=600");
    let mut usim = usim();
    let ok = register_over(&mut hop, &mut ue, &mut usim).await;
    assert_eq!(ok.status(), Some(200), "{ok}");

    let p_uri = "sip:pcscf1.vims.net";
    let contact = format!("<sip:pcscf9.vims.net:{}>", pcscf.addr.port());
    let mut p = Sub::new("by-name-1", ALICE, p_uri, &contact).asserting(p_uri);
    let resp = hop.request(p.subscribe(3600)).await;
    p.accepted(&resp);
    assert_eq!(events.subscription_count(), 1);
    let n = pcscf.notify().await;
    assert_eq!(
        n.request_uri_str(),
        Some(format!("sip:pcscf9.vims.net:{}", pcscf.addr.port()).as_str())
    );
    assert_eq!(sub_state(&n).0, "active");
    // A registration change: the next NOTIFY goes there too, none to the hop.
    reregister_over(&mut hop, &mut ue, 600).await;
    assert_eq!(reginfo(&pcscf.notify().await).version, 1);
    hop.quiet(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reg_event_refusals_fetch_and_the_pcscf() {
    let lab = lab().await;
    let (scscf, events) = daemon(lab.config()).await;
    let mut peer = Peer::new(scscf).await;
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>;expires=600");
    let mut usim = usim();
    let ok = register_over(&mut peer, &mut ue, &mut usim).await;
    assert_eq!(ok.status(), Some(200), "{ok}");
    let contact = format!("<sip:alice@{}>", peer.addr);

    // Another event package, or none: 489 naming the one we serve.
    let mut s = Sub::new("refused-1", ALICE, ALICE, &contact).asserting(ALICE);
    let resp = peer
        .request(s.request(Some("presence"), Some(600), &[]))
        .await;
    assert_eq!(resp.status(), Some(489), "{resp}");
    assert_eq!(resp.header_str(HeaderName::AllowEvents), Some("reg"));
    let resp = peer.request(s.request(None, Some(600), &[])).await;
    assert_eq!(resp.status(), Some(489), "{resp}");
    // An identity not registered here: 480 (TS 24.229 §5.4.2.1.1 step 0).
    let mut s = Sub::new("refused-2", BOB, BOB, &contact).asserting(BOB);
    let resp = peer.request(s.subscribe(600)).await;
    assert_eq!(resp.status(), Some(480), "{resp}");
    // Bob asking for Alice's registration: 403 (step 1).
    let mut s = Sub::new("refused-3", ALICE, BOB, &contact).asserting(BOB);
    let resp = peer.request(s.subscribe(600)).await;
    assert_eq!(resp.status(), Some(403), "{resp}");
    // So is a barred identity of Alice's own.
    let mut s = Sub::new("refused-4", ALICE, ALICE_BARRED, &contact).asserting(ALICE_BARRED);
    let resp = peer.request(s.subscribe(600)).await;
    assert_eq!(resp.status(), Some(403), "{resp}");
    // P-Asserted-Identity decides, not From.
    let mut s = Sub::new("refused-5", ALICE, ALICE, &contact).asserting(BOB);
    let resp = peer.request(s.subscribe(600)).await;
    assert_eq!(resp.status(), Some(403), "{resp}");
    // Too brief: 423 with Min-Expires.
    let mut s = Sub::new("refused-6", ALICE, ALICE, &contact).asserting(ALICE);
    let resp = peer.request(s.subscribe(30)).await;
    assert_eq!(resp.status(), Some(423), "{resp}");
    assert_eq!(resp.header_str(HeaderName::MinExpires), Some("60"));
    // An Accept without reginfo: 406.
    let resp = peer
        .request(s.request(Some("reg"), Some(600), &[("Accept", "text/plain")]))
        .await;
    assert_eq!(resp.status(), Some(406), "{resp}");
    // Malformed: no Contact, a CSeq that is not a number.
    s.contact = None;
    let resp = peer.request(s.subscribe(600)).await;
    assert_eq!(resp.status(), Some(400), "{resp}");
    assert!(reason(&resp).contains("Contact"), "{}", reason(&resp));
    s.contact = Some(contact.clone());
    let mut bad = s.subscribe(600);
    bad.set_header("CSeq", "x SUBSCRIBE").unwrap();
    let resp = peer.request(bad).await;
    assert_eq!(resp.status(), Some(400), "{resp}");
    // A SUBSCRIBE in a dialog that does not exist: 481.
    s.to_tag = Some("no-such-dialog".into());
    let resp = peer.request(s.subscribe(600)).await;
    assert_eq!(resp.status(), Some(481), "{resp}");
    peer.quiet(Duration::from_millis(300)).await;
    assert_eq!(events.subscription_count(), 0);

    // A fetch (Expires: 0): 200, one NOTIFY with the full state, and the end.
    let mut f = Sub::new("fetch-1", ALICE, ALICE, &contact).asserting(ALICE);
    let resp = peer.request(f.subscribe(0)).await;
    f.accepted(&resp);
    assert_eq!(resp.header_str(HeaderName::Expires), Some("0"));
    let n = peer.notify().await;
    assert_eq!(
        sub_state(&n),
        ("terminated".into(), Some("timeout".into()), None)
    );
    let doc = reginfo(&n);
    assert_eq!(doc.version, 0);
    assert_eq!(aors(&doc), [ALICE, ALICE_TEL]);
    assert_eq!(only_contact(&doc).state, "active");
    wait_until("the fetch leaves nothing", || {
        events.subscription_count() == 0
    })
    .await;

    // The P-CSCF on the Path subscribes, to the tel URI of the implicit set, without
    // Record-Route: the NOTIFY goes straight to its Contact.
    let pcscf = "sip:pcscf1.vims.net";
    let pcontact = format!("<sip:pcscf@{}>", peer.addr);
    let mut p = Sub::new("pcscf-1", ALICE_TEL, pcscf, &pcontact).asserting(pcscf);
    let resp = peer.request(p.subscribe(3600)).await;
    p.accepted(&resp);
    assert_eq!(events.resources(), [ALICE_TEL]);
    let n = peer.notify().await;
    assert_eq!(
        n.request_uri_str(),
        Some(format!("sip:pcscf@{}", peer.addr).as_str())
    );
    assert!(n.header(HeaderName::Route).is_none());
    assert_eq!(n.from_addr().unwrap().uri_str, ALICE_TEL);
    let doc = reginfo(&n);
    assert_eq!((doc.version, aors(&doc)), (0, vec![ALICE, ALICE_TEL]));

    // The P-CSCF forgot it: its 481 to the next NOTIFY removes the subscription.
    peer.notify_status = 481;
    reregister_over(&mut peer, &mut ue, 600).await;
    let n = peer.notify().await;
    assert_eq!(reginfo(&n).version, 1);
    wait_until("the 481 removes the subscription", || {
        events.subscription_count() == 0
    })
    .await;
    peer.notify_status = 200;
    reregister_over(&mut peer, &mut ue, 600).await;
    peer.quiet(Duration::from_millis(700)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reg_event_subscription_expiry_and_network_deregistration() {
    let lab = lab().await;
    let mut cfg = lab.config();
    cfg.subscribe_min_expires = 1;
    let (scscf, events) = daemon(cfg).await;
    let mut peer = Peer::new(scscf).await;
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>;expires=600");
    let mut usim = usim();
    let ok = register_over(&mut peer, &mut ue, &mut usim).await;
    assert_eq!(ok.status(), Some(200), "{ok}");
    let contact = format!("<sip:alice@{}>", peer.addr);

    // A two-second subscription ends on its own: terminated;reason=timeout, full state.
    let mut s = Sub::new("short-1", ALICE, ALICE, &contact).asserting(ALICE);
    let resp = peer.request(s.subscribe(2)).await;
    s.accepted(&resp);
    assert_eq!(resp.header_str(HeaderName::Expires), Some("2"));
    let n = peer.notify().await;
    assert_eq!(sub_state(&n).0, "active");
    let started = std::time::Instant::now();
    let n = peer.notify().await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "expired too early"
    );
    assert_eq!(
        sub_state(&n),
        ("terminated".into(), Some("timeout".into()), None)
    );
    let doc = reginfo(&n);
    assert_eq!(doc.version, 1);
    assert!(doc.regs.iter().all(|r| r.state == "active"));
    wait_until("the expired subscription is gone", || {
        events.subscription_count() == 0
    })
    .await;

    // A route set whose first hop is a host name (no DNS configured): the NOTIFY goes back
    // where the SUBSCRIBE came from, with the Route.
    let rr = "<sip:mt@pcscf1.vims.net:5060;lr>";
    let mut s = Sub::new("rtr-1", ALICE, ALICE, &contact).asserting(ALICE);
    s.headers.push(("Record-Route", rr.into()));
    let resp = peer.request(s.subscribe(600)).await;
    s.accepted(&resp);
    let n = peer.notify().await;
    assert_eq!(values(&n, HeaderName::Route), [rr]);
    assert_eq!(reginfo(&n).version, 0);

    // RTR from the HSS: the last NOTIFY, the contact deactivated, noresource.
    let admin = lab.admin;
    let body = tokio::task::spawn_blocking(move || {
        admin_post(admin, &format!("/v1/subscribers/{ALICE_IMPI}/deregister"))
    })
    .await
    .unwrap();
    assert!(body.contains("\"result_code\":2001"), "{body}");
    let n = peer.notify().await;
    assert_eq!(
        sub_state(&n),
        ("terminated".into(), Some("noresource".into()), None)
    );
    let doc = reginfo(&n);
    assert_eq!(doc.version, 1);
    assert!(doc.regs.iter().all(|r| r.state == "terminated"), "{doc:?}");
    let c = only_contact(&doc);
    assert_eq!(
        (c.state.as_str(), c.event.as_str()),
        ("terminated", "deactivated")
    );
    wait_until("the subscription is gone", || {
        events.subscription_count() == 0
    })
    .await;
}

// ----------------------------------------------------------------------------------------
// session routing (TS 24.229 §5.4.3): INVITE, MESSAGE and OPTIONS, requests in a dialog

fn message(ruri: &str, route: Option<&str>, pai: Option<&str>) -> Message {
    request("MESSAGE", ruri, None, route, pai)
}

fn request(
    method: &str,
    ruri: &str,
    to_tag: Option<&str>,
    route: Option<&str>,
    pai: Option<&str>,
) -> Message {
    let to = match to_tag {
        Some(t) => format!("<{ruri}>;tag={t}"),
        None => format!("<{ruri}>"),
    };
    let mut b = RequestBuilder::new(method, ruri)
        .header("Via", "SIP/2.0/UDP 127.0.0.10;branch=z9hG4bKp1")
        .header("From", "<sip:alice@hims.net>;tag=m1")
        .header("To", &to)
        .header("Call-ID", &format!("msg-{ruri}"))
        .header("CSeq", &format!("1 {method}"))
        .header("Max-Forwards", "69");
    if let Some(r) = route {
        b = b.header("Route", r);
    }
    if let Some(p) = pai {
        b = b.header("P-Asserted-Identity", &format!("<{p}>"));
    }
    b.build().unwrap()
}

/// The decisions without sockets: originating (the served user, the home I-CSCF by the
/// callee's domain, no breakout), terminating (the contacts through their Path, the implicit
/// set's tel: URI, an unregistered callee).
#[tokio::test(flavor = "multi_thread")]
async fn session_routing_plans() {
    use ims_scscf::session::{Plan, plan};
    let lab = lab().await;
    let r = lab.registrar().await;
    let mut ue = Ue::new(ALICE_IMPI, ALICE, "<sip:alice@10.0.0.2:5060>;expires=600");
    let ok = aka_register(&r, &mut ue, &mut usim(), Qop::Auth, &[]).await;
    assert_eq!(ok.status(), Some(200), "{ok}");
    let orig = Some("<sip:orig@scscf1.hims.net:5060;lr>");
    let term = Some("<sip:scscf1.hims.net:5060;lr>");

    // Originating, from alice to bob of our domain: toward hims.net's I-CSCF, our Route gone.
    match plan(&message(BOB, orig, Some(ALICE)), &r) {
        Plan::Forward(b) => {
            assert_eq!(b.next_hop, "sip:hims.net");
            assert_eq!(b.message.request_uri_str(), Some(BOB));
            assert!(
                b.message.header(HeaderName::Route).is_none(),
                "{}",
                b.message
            );
        }
        p => panic!("originating to bob: {p:?}"),
    }
    // A tel: callee goes to the home domain's I-CSCF as well (the HSS knows our numbers).
    match plan(&message("tel:+4930999", orig, Some(ALICE)), &r) {
        Plan::Forward(b) => assert_eq!(b.next_hop, "sip:hims.net"),
        p => panic!("originating to a tel: URI: {p:?}"),
    }
    // Another Route after ours is followed.
    match plan(
        &message(
            BOB,
            Some("<sip:orig@scscf1.hims.net:5060;lr>, <sip:as1.hims.net;lr>"),
            Some(ALICE),
        ),
        &r,
    ) {
        Plan::Forward(b) => assert_eq!(b.next_hop, "sip:as1.hims.net;lr"),
        p => panic!("originating with a second Route: {p:?}"),
    }
    // No breakout: another domain is 404; no asserted identity, or one not registered here,
    // is 403.
    for (req, code) in [
        (message("sip:carol@example.org", orig, Some(ALICE)), 404),
        (message(BOB, orig, None), 403),
        (message(ALICE, orig, Some(BOB)), 403),
    ] {
        match plan(&req, &r) {
            Plan::Refuse(c, why) => assert_eq!(c, code, "{why}"),
            p => panic!("{req}: {p:?}"),
        }
    }

    // Terminating for alice (the I-CSCF's Route): her contact as Request-URI, her Path as
    // Route, sent to the P-CSCF the Path names. Her tel: URI reaches the same contact.
    for ruri in [ALICE, ALICE_TEL] {
        match plan(&message(ruri, term, None), &r) {
            Plan::Fork(branches) => {
                assert_eq!(branches.len(), 1);
                let b = &branches[0];
                assert_eq!(b.message.request_uri_str(), Some("sip:alice@10.0.0.2:5060"));
                assert_eq!(
                    b.message.header_str(HeaderName::Route),
                    Some(PATH),
                    "{}",
                    b.message
                );
                assert_eq!(b.next_hop, "sip:term@pcscf1.vims.net;lr");
            }
            p => panic!("terminating to {ruri}: {p:?}"),
        }
    }
    // Bob is provisioned but not registered: SAR UNREGISTERED_USER, then 480.
    match plan(&message(BOB, term, None), &r) {
        Plan::Unregistered(impu) => assert_eq!(impu, BOB),
        p => panic!("terminating to bob: {p:?}"),
    }
    // MESSAGE creates no dialog: no Record-Route. INVITE gets ours on both passes.
    let rr = "<sip:scscf1.hims.net:5060;lr>";
    match plan(&request("INVITE", BOB, None, orig, Some(ALICE)), &r) {
        Plan::Forward(b) => {
            assert_eq!(b.message.header_str(HeaderName::RecordRoute), Some(rr));
            assert_eq!(b.next_hop, "sip:hims.net");
        }
        p => panic!("originating INVITE: {p:?}"),
    }
    match plan(&request("INVITE", ALICE, None, term, None), &r) {
        Plan::Fork(bs) => {
            assert_eq!(bs[0].message.header_str(HeaderName::RecordRoute), Some(rr));
            assert_eq!(bs[0].message.header_str(HeaderName::Route), Some(PATH));
        }
        p => panic!("terminating INVITE: {p:?}"),
    }
    match plan(&message(ALICE, term, None), &r) {
        Plan::Fork(bs) => assert!(bs[0].message.header(HeaderName::RecordRoute).is_none()),
        p => panic!("terminating MESSAGE: {p:?}"),
    }
    // Inside a dialog: both our entries (the two passes) removed, the rest followed, no
    // identity asked for; without more Route, the remote target. Nothing added.
    let set =
        "<sip:scscf1.hims.net:5060;lr>, <sip:scscf1.hims.net:5060;lr>, <sip:mt@pcscf1.vims.net;lr>";
    for method in ["BYE", "ACK", "INVITE", "UPDATE", "PRACK", "INFO", "MESSAGE"] {
        match plan(
            &request(method, "sip:bob@10.0.0.3:5060", Some("b1"), Some(set), None),
            &r,
        ) {
            Plan::Forward(b) => {
                assert_eq!(b.next_hop, "sip:mt@pcscf1.vims.net;lr", "{method}");
                assert_eq!(b.message.values(HeaderName::Route).count(), 1);
                assert!(b.message.header(HeaderName::RecordRoute).is_none());
            }
            p => panic!("{method} in a dialog: {p:?}"),
        }
    }
    match plan(
        &request("BYE", "sip:bob@10.0.0.3:5060", Some("b1"), term, None),
        &r,
    ) {
        Plan::Forward(b) => assert_eq!(b.next_hop, "sip:bob@10.0.0.3:5060"),
        p => panic!("BYE to the remote target: {p:?}"),
    }
    // Requests that only exist inside a dialog go nowhere outside one.
    for method in ["ACK", "NOTIFY", "BYE", "UPDATE", "PRACK", "INFO"] {
        match plan(&request(method, ALICE, None, term, None), &r) {
            Plan::Refuse(481, _) => {}
            p => panic!("{method} outside a dialog: {p:?}"),
        }
    }
}

/// Through the daemon: a callee that is not registered is 480 after SAR UNREGISTERED_USER
/// (the HSS then names us for bob in the unregistered state); one the HSS does not know is
/// 404; a Max-Forwards of 0 is 483.
#[tokio::test(flavor = "multi_thread")]
async fn message_to_an_unregistered_or_unknown_callee() {
    let lab = lab().await;
    let (addr, _) = daemon(lab.config()).await;
    let mut peer = Peer::new(addr).await;
    let term = Some("<sip:scscf1.hims.net:5060;lr>");
    let resp = peer.request(message(BOB, term, None)).await;
    assert_eq!(resp.status(), Some(480), "{resp}");
    let (state, scscf) = lab.hss_view(BOB).await;
    assert_eq!(
        (state, scscf.as_deref()),
        (2, Some(NAME)),
        "bob is unregistered with us"
    );
    let resp = peer
        .request(message("sip:nobody@hims.net", term, None))
        .await;
    assert_eq!(resp.status(), Some(404), "{resp}");
    let mut hop0 = message(BOB, term, None);
    hop0.set_header("Max-Forwards", "0").unwrap();
    let resp = peer.request(hop0).await;
    assert_eq!(resp.status(), Some(483), "{resp}");
}

/// Issue #17's bad input at the S-CSCF, each with a specific answer and the daemon unharmed:
/// an INVITE without SDP and one with a broken SDP body are routed like any other (the core
/// never reads the SDP: 480 and 404 here); a Route to a host that does not resolve is 404; a
/// Max-Forwards of 0 is 483; a request without Call-ID is 400; a CANCEL matching nothing is
/// 481; an ACK matching nothing is dropped; the daemon still answers afterwards. And an
/// originating request is believed only from the served user's P-CSCF (its Path): from
/// anywhere else it is 403.
#[tokio::test(flavor = "multi_thread")]
async fn bad_call_input_gets_specific_answers() {
    let lab = lab().await;
    let (addr, _) = daemon(lab.config()).await;
    let mut peer = Peer::new(addr).await;
    let mut ue = Ue::new(ALICE_IMPI, ALICE, &format!("<sip:alice@{}>", peer.addr));
    let ok = register_over(&mut peer, &mut ue, &mut usim()).await;
    assert_eq!(ok.status(), Some(200), "{ok}");
    // Alice's Path names pcscf1.vims.net, which is not us (the peer): her identity is not
    // believed from here.
    let spoofed = request(
        "MESSAGE",
        BOB,
        None,
        Some("<sip:orig@scscf1.hims.net:5060;lr>"),
        Some(ALICE),
    );
    let r = peer.request(spoofed).await;
    assert_eq!(r.status(), Some(403), "not from alice's P-CSCF: {r}");
    // Registered again through a P-CSCF at the peer's address: now it is hers.
    ue.path = format!("<sip:term@{};lr>", peer.addr);
    let ok = register_over(&mut peer, &mut ue, &mut usim()).await;
    assert_eq!(ok.status(), Some(200), "{ok}");
    let term = Some("<sip:scscf1.hims.net:5060;lr>");

    let no_sdp = request("INVITE", BOB, None, term, None);
    let r = peer.request(no_sdp).await;
    assert_eq!(r.status(), Some(480), "no SDP, callee not registered: {r}");

    let mut broken = request("INVITE", "sip:nobody@hims.net", None, term, None);
    broken
        .set_body(
            Some("application/sdp"),
            Bytes::from_static(b"v=banana\r\nm=\x01\x02 nonsense\r\n"),
        )
        .unwrap();
    let r = peer.request(broken).await;
    assert_eq!(r.status(), Some(404), "broken SDP, unknown callee: {r}");

    let unknown_route = request(
        "INVITE",
        BOB,
        None,
        Some("<sip:orig@scscf1.hims.net:5060;lr>, <sip:nowhere.invalid;lr>"),
        Some(ALICE),
    );
    let r = peer.request(unknown_route).await;
    assert_eq!(r.status(), Some(404), "a Route that does not resolve: {r}");

    let mut hop0 = request("INVITE", BOB, None, term, None);
    hop0.set_header("Max-Forwards", "0").unwrap();
    let r = peer.request(hop0).await;
    assert_eq!(r.status(), Some(483), "{r}");

    let mut no_call_id = request("INVITE", BOB, None, term, None);
    no_call_id.remove_headers(HeaderName::CallId);
    let r = peer.request(no_call_id).await;
    assert_eq!(r.status(), Some(400), "{r}");
    assert!(
        r.reason()
            .is_some_and(|why| String::from_utf8_lossy(why).contains("Call-ID")),
        "the 400 names the problem: {r}"
    );

    let r = peer.request(request("CANCEL", BOB, None, term, None)).await;
    assert_eq!(r.status(), Some(481), "a CANCEL for no INVITE: {r}");

    // An ACK for nothing: no answer at all (an ACK is never answered), nothing else either.
    let mut ack = request("ACK", BOB, None, term, None);
    ack.prepend_header(
        "Via",
        &format!("SIP/2.0/UDP {};branch=z9hG4bKlostack;rport", peer.addr),
    )
    .unwrap();
    peer.sock.send_to(&ack.to_bytes(), addr).await.unwrap();
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_millis(500) {
        peer.pump(Duration::from_millis(100)).await;
    }
    assert!(
        !peer
            .responses
            .iter()
            .any(|r| r.top_via().unwrap().branch() == Some("z9hG4bKlostack")),
        "an ACK got an answer"
    );
    // Still serving.
    let r = peer
        .request(message("sip:nobody@hims.net", term, None))
        .await;
    assert_eq!(r.status(), Some(404), "{r}");
}
