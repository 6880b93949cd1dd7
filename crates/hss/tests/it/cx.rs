//! Cx on the HSS over real TCP: every answer of the issue. An HSS runs in this process
//! (admin + Diameter listeners); a Cx client (`cxclient`: our Diameter peer on a std socket,
//! Origin-Host icscf1.hims.net) sends requests encoded with our codec; answers are decoded
//! with it; vectors are checked by a USIM model from the aka crate (it must accept AUTN, and
//! its RES, CK and IK must equal XRES, CK and IK of the answer).

use ims_aka::{Milenage, Rand, Sqn, SqnScheme, Usim, UsimResponse, UsimSqnState, vector};
use ims_diameter::cx::{Lia, Lir, Maa, Mar, RequestBase, Saa, Sar, SipAuthDataItem, Uaa, Uar};
use ims_diameter::dict::{
    self, ServerAssignmentType as Sat, UserAuthorizationType as Uat, UserDataAlreadyAvailable,
};
use ims_diameter::{AnswerResult, Header, Message, MessageBuilder};
use ims_store::{CapabilitySet, Credentials, NewPublicIdentity, NewSubscriber, Store};
use zeroize::Zeroizing;

const K: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
const OPC: &str = "cd63cb71954a9f4e48a5994e37a02baf";
const SCSCF: &str = "sip:scscf1.hims.net:6060";

fn exp(code: u32) -> AnswerResult {
    AnswerResult::experimental(code)
}

struct Env {
    store: Store,
    client: crate::cxclient::CxClient,
    _hss: crate::admin::Running,
    /// The PostgreSQL cluster when the test runs on PostgreSQL (dropped last: stops it).
    _pg: Option<ims_testkit::postgres::Postgres>,
    hop: u32,
    /// Every request and its answer, for tshark.
    wire: Vec<Vec<u8>>,
}

fn aka(impi: &str, impus: &[(&str, bool)], roaming: &[&str], caps: Option<&str>) -> NewSubscriber {
    NewSubscriber {
        name: impi.split('@').next().unwrap().to_owned(),
        impi: impi.into(),
        credentials: Credentials::Aka {
            k: Zeroizing::new(hex::decode(K).unwrap()),
            opc: Zeroizing::new(hex::decode(OPC).unwrap()),
            amf: [0x80, 0x00],
            sqn: 0,
        },
        public_identities: impus
            .iter()
            .map(|(impu, barred)| NewPublicIdentity {
                impu: (*impu).into(),
                barred: *barred,
                irs: 0,
            })
            .collect(),
        ifc_xml: "<InitialFilterCriteria><Priority>0</Priority></InitialFilterCriteria>".into(),
        capability_set: caps.map(str::to_owned),
        roaming_allowed: roaming.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Which database the suite runs on.
#[derive(Clone, Copy, Debug)]
enum Db {
    Sqlite,
    Postgres,
}

/// Every Cx case runs on both backends: `both!(name)` makes `name::sqlite` and
/// `name::postgres` (the latter prints SKIP without PostgreSQL, and fails under CI=true).
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                if let Some(e) = super::env(super::Db::Sqlite, stringify!($name)).await {
                    super::$name(e).await;
                }
            }
            #[tokio::test]
            async fn postgres() {
                if let Some(e) = super::env(super::Db::Postgres, stringify!($name)).await {
                    super::$name(e).await;
                }
            }
        }
    };
}

both!(uar_answers);
both!(mar_vectors_are_accepted_by_the_usim_and_sqn_only_grows);
both!(mar_resync_gives_a_vector_the_ue_accepts);
both!(mar_digest_schemes_and_errors);
both!(sar_assignment_types_and_user_data);
both!(lir_answers);
both!(sloppy_requests_are_told_what_is_wrong);

async fn env(db: Db, test: &str) -> Option<Env> {
    let (url, pg) = match db {
        Db::Sqlite => {
            let dir = ims_testkit::scratch_dir("hss-cx");
            (
                format!("sqlite://{}", dir.join("hss.sqlite").display()),
                None,
            )
        }
        Db::Postgres => {
            let pg = ims_testkit::postgres::Postgres::start(&format!("hss_cx_{test}_postgres"))?;
            (pg.url(), Some(pg))
        }
    };
    let hss = crate::admin::start_on(
        url,
        ims_hss::DiameterConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            origin_host: Some("hss1.hims.net".into()),
            allowed_peers: vec!["icscf1.hims.net".into()],
            max_auth_items: 2,
            sqn_ind_bits: 5,
            capabilities: ims_hss::Capabilities {
                mandatory: vec![1],
                optional: vec![3, 4],
                server_names: vec![],
            },
            ..Default::default()
        },
    );
    let store = Store::open(&hss.db).await.unwrap();
    store
        .put_capability_set(&CapabilitySet {
            name: "gold".into(),
            mandatory: vec![1, 2],
            optional: vec![7],
            server_names: vec!["sip:scscf2.hims.net".into()],
        })
        .await
        .unwrap();
    for s in [
        aka(
            "alice.private@hims.net",
            &[("sip:alice@hims.net", false), ("tel:+4930123", false)],
            &["vims.net"],
            None,
        ),
        aka(
            "bob.private@hims.net",
            &[("sip:bob@hims.net", false)],
            &[],
            Some("gold"),
        ),
        aka(
            "eve.private@hims.net",
            &[("sip:eve@hims.net", true)],
            &[],
            None,
        ),
    ] {
        store.add_subscriber(&s).await.unwrap();
    }
    store
        .add_subscriber(&NewSubscriber {
            name: "carol".into(),
            impi: "carol@hims.net".into(),
            credentials: Credentials::Digest {
                realm: "hims.net".into(),
                ha1: Zeroizing::new("0123456789abcdef0123456789abcdef".into()),
            },
            public_identities: vec![NewPublicIdentity {
                impu: "sip:carol@hims.net".into(),
                barred: false,
                irs: 0,
            }],
            ifc_xml: String::new(),
            capability_set: None,
            roaming_allowed: vec![],
        })
        .await
        .unwrap();
    let client =
        crate::cxclient::CxClient::connect(hss.diameter, "icscf1.hims.net").expect("Cx peer up");
    Some(Env {
        store,
        client,
        _hss: hss,
        _pg: pg,
        hop: 0,
        wire: Vec::new(),
    })
}

impl Env {
    fn base(&mut self) -> RequestBase<'static> {
        self.hop += 1;
        RequestBase {
            hop_by_hop: self.hop,
            end_to_end: 1000 + self.hop,
            session_id: "icscf1.hims.net;1;2",
            origin_host: "icscf1.hims.net",
            origin_realm: "hims.net",
            destination_realm: "hims.net",
            ..RequestBase::default()
        }
    }

    async fn ask(&mut self, req: &[u8]) -> Vec<u8> {
        let answer = self.client.ask(req.to_vec());
        let msg = Message::parse(&answer).unwrap();
        let reqm = Message::parse(req).unwrap();
        assert!(!msg.is_request());
        assert_eq!(msg.command_code(), reqm.command_code());
        self.wire.push(req.to_vec());
        self.wire.push(answer.clone());
        answer
    }

    async fn uar(&mut self, impi: &str, impu: &str, vni: &str, t: Option<Uat>) -> Vec<u8> {
        let r = Uar {
            base: self.base(),
            user_name: impi,
            public_identity: impu,
            visited_network_identifier: vni.as_bytes(),
            authorization_type: t,
            uar_flags: None,
        };
        let mut b = Vec::new();
        r.encode(&mut b).unwrap();
        self.ask(&b).await
    }

    async fn mar(
        &mut self,
        impi: &str,
        impu: &str,
        scheme: &str,
        n: u32,
        authz: Option<&[u8]>,
    ) -> Vec<u8> {
        let r = Mar {
            base: self.base(),
            user_name: impi,
            public_identity: impu,
            server_name: SCSCF,
            number_auth_items: n,
            auth_data_item: SipAuthDataItem {
                authentication_scheme: Some(scheme),
                authorization: authz,
                ..SipAuthDataItem::default()
            },
        };
        let mut b = Vec::new();
        r.encode(&mut b).unwrap();
        self.ask(&b).await
    }

    async fn sar(&mut self, impi: Option<&str>, impu: &str, t: Sat, have_data: bool) -> Vec<u8> {
        let r = Sar {
            base: self.base(),
            user_name: impi,
            public_identities: vec![impu],
            server_name: SCSCF,
            assignment_type: t,
            user_data_already_available: if have_data {
                UserDataAlreadyAvailable::UserDataAlreadyAvailable
            } else {
                UserDataAlreadyAvailable::UserDataNotAvailable
            },
        };
        let mut b = Vec::new();
        r.encode(&mut b).unwrap();
        self.ask(&b).await
    }

    async fn lir(&mut self, impu: &str) -> Vec<u8> {
        self.lir_as(impu, None).await
    }

    async fn lir_as(&mut self, impu: &str, orig: Option<dict::OriginatingRequest>) -> Vec<u8> {
        let r = Lir {
            base: self.base(),
            public_identity: impu,
            originating_request: orig,
            authorization_type: None,
        };
        let mut b = Vec::new();
        r.encode(&mut b).unwrap();
        self.ask(&b).await
    }
}

fn uaa(b: &[u8]) -> Uaa<'_> {
    Uaa::decode(&Message::parse(b).unwrap()).unwrap()
}
fn maa(b: &[u8]) -> Maa<'_> {
    Maa::decode(&Message::parse(b).unwrap()).unwrap()
}
fn saa(b: &[u8]) -> Saa<'_> {
    Saa::decode(&Message::parse(b).unwrap()).unwrap()
}
fn lia(b: &[u8]) -> Lia<'_> {
    Lia::decode(&Message::parse(b).unwrap()).unwrap()
}

fn milenage() -> Milenage {
    Milenage::new(
        &ims_aka::Key::from_hex(K).unwrap(),
        &ims_aka::Opc::from_hex(OPC).unwrap(),
    )
}

/// The USIM's view of one vector: AUTN accepted (or AUTS), and its RES/CK/IK.
fn usim_check(usim: &mut Usim, item: &SipAuthDataItem<'_>) -> UsimResponse {
    let auth = item.authenticate.unwrap();
    let rand = Rand::from_slice(&auth[..16]).unwrap();
    let autn = ims_aka::Autn::from_slice(&auth[16..]).unwrap();
    let r = usim.authenticate(&rand, &autn).unwrap();
    if let UsimResponse::Success(ok) = &r {
        assert_eq!(ok.res.expose(), item.authorization.unwrap(), "RES == XRES");
        assert_eq!(&ok.ck.expose()[..], item.confidentiality_key.unwrap());
        assert_eq!(&ok.ik.expose()[..], item.integrity_key.unwrap());
    }
    r
}

async fn uar_answers(mut e: Env) {
    let a = "alice.private@hims.net";
    let r = e
        .uar("nobody@hims.net", "sip:nobody@hims.net", "hims.net", None)
        .await;
    assert_eq!(uaa(&r).base.result, exp(5001));
    let r = e
        .uar("nobody@hims.net", "sip:alice@hims.net", "hims.net", None)
        .await;
    assert_eq!(uaa(&r).base.result, exp(5001), "unknown IMPI");
    let r = e.uar(a, "sip:bob@hims.net", "hims.net", None).await;
    assert_eq!(uaa(&r).base.result, exp(5002));
    let r = e
        .uar("eve.private@hims.net", "sip:eve@hims.net", "hims.net", None)
        .await;
    assert_eq!(
        uaa(&r).base.result,
        AnswerResult::ResultCode(5003),
        "barred"
    );
    let r = e.uar(a, "sip:alice@hims.net", "evil.net", None).await;
    assert_eq!(uaa(&r).base.result, exp(5004));
    let r = e
        .uar("bob.private@hims.net", "sip:bob@hims.net", "vims.net", None)
        .await;
    assert_eq!(
        uaa(&r).base.result,
        exp(5004),
        "vims.net is allowed for alice only"
    );

    // First registration: capabilities (config default for alice, bob's own set).
    let r = e
        .uar(a, "sip:alice@hims.net", "vims.net", Some(Uat::Registration))
        .await;
    let u = uaa(&r);
    assert_eq!(u.base.result, exp(2001));
    let caps = u.server_capabilities.unwrap();
    assert_eq!((caps.mandatory, caps.optional), (vec![1], vec![3, 4]));
    assert!(u.server_name.is_none());
    let r = e
        .uar("bob.private@hims.net", "sip:bob@hims.net", "hims.net", None)
        .await;
    let caps = uaa(&r).server_capabilities.unwrap();
    assert_eq!(caps.mandatory, vec![1, 2]);
    assert_eq!(caps.server_names, vec!["sip:scscf2.hims.net"]);

    // Deregistration of someone not registered: 5003 identity not registered.
    let r = e
        .uar(
            a,
            "sip:alice@hims.net",
            "hims.net",
            Some(Uat::DeRegistration),
        )
        .await;
    assert_eq!(uaa(&r).base.result, exp(5003));

    // Register (MAR records the S-CSCF, SAR assigns it), then: subsequent, with its name.
    e.mar(a, "sip:alice@hims.net", "Digest-AKAv1-MD5", 1, None)
        .await;
    let r = e
        .sar(Some(a), "sip:alice@hims.net", Sat::Registration, false)
        .await;
    assert_eq!(saa(&r).base.result, AnswerResult::SUCCESS);
    let r = e.uar(a, "tel:+4930123", "hims.net", None).await;
    let u = uaa(&r);
    assert_eq!(
        u.base.result,
        exp(2002),
        "the implicit set registered together"
    );
    assert_eq!(u.server_name, Some(SCSCF));
    let r = e
        .uar(
            a,
            "sip:alice@hims.net",
            "hims.net",
            Some(Uat::DeRegistration),
        )
        .await;
    let u = uaa(&r);
    assert_eq!(
        (u.base.result, u.server_name),
        (AnswerResult::SUCCESS, Some(SCSCF))
    );
    let r = e
        .uar(
            a,
            "sip:alice@hims.net",
            "hims.net",
            Some(Uat::RegistrationAndCapabilities),
        )
        .await;
    let u = uaa(&r);
    assert_eq!(u.base.result, exp(2001));
    assert!(u.server_capabilities.is_some());
}

async fn mar_vectors_are_accepted_by_the_usim_and_sqn_only_grows(mut e: Env) {
    let a = "alice.private@hims.net";
    let scheme = SqnScheme::new(5).unwrap();
    let mut usim = Usim::new(milenage(), UsimSqnState::new(scheme));
    let mut last_sqn = 0u64;
    for round in 0..4 {
        // Ask for 3: the HSS caps at 2 (config).
        let r = e
            .mar(
                a,
                "sip:alice@hims.net",
                if round % 2 == 0 {
                    "Digest-AKAv1-MD5"
                } else {
                    "Unknown"
                },
                3,
                None,
            )
            .await;
        let m = maa(&r);
        assert_eq!(m.base.result, AnswerResult::SUCCESS);
        assert_eq!(m.number_auth_items, Some(2));
        assert_eq!(m.auth_data_items.len(), 2);
        for item in &m.auth_data_items {
            assert_eq!(item.authentication_scheme, Some("Digest-AKAv1-MD5"));
            let auth = item.authenticate.unwrap();
            let rand = Rand::from_slice(&auth[..16]).unwrap();
            let autn = ims_aka::Autn::from_slice(&auth[16..]).unwrap();
            let ue = vector::verify_autn(&milenage(), &rand, &autn).unwrap();
            assert!(ue.sqn.value() > last_sqn, "SQN strictly increases");
            last_sqn = ue.sqn.value();
            assert!(matches!(
                usim_check(&mut usim, item),
                UsimResponse::Success(_)
            ));
        }
    }
    // The HSS reserves SQNs in blocks (sqn_block, 32 by default) before it hands any out:
    // the store holds the end of the current block, never less than what went out.
    let stored = e.store.subscriber(a).await.unwrap().unwrap().sqn.unwrap();
    assert!(
        stored >= last_sqn && stored - last_sqn < 32 << 5,
        "the store holds the end of the reserved block: stored {stored}, last handed out {last_sqn}"
    );
}

async fn mar_resync_gives_a_vector_the_ue_accepts(mut e: Env) {
    let a = "alice.private@hims.net";
    let scheme = SqnScheme::new(5).unwrap();
    // The UE has seen far more than the HSS (e.g. the HSS was restored from a backup).
    let sqn_ms = Sqn::new(5_000 << 5).unwrap();
    let mut usim = Usim::new(milenage(), UsimSqnState::with_sqn_ms(scheme, sqn_ms));
    let r = e
        .mar(a, "sip:alice@hims.net", "Digest-AKAv1-MD5", 1, None)
        .await;
    let m = maa(&r);
    let item = &m.auth_data_items[0];
    let UsimResponse::SyncFailure(auts) = usim_check(&mut usim, item) else {
        panic!("the UE must refuse a stale SQN");
    };
    let rand = Rand::from_slice(&item.authenticate.unwrap()[..16]).unwrap();
    let authz = vector::resync_authorization(&rand, &auts);
    let r = e
        .mar(a, "sip:alice@hims.net", "Digest-AKAv1-MD5", 1, Some(&authz))
        .await;
    let m = maa(&r);
    assert_eq!(m.base.result, AnswerResult::SUCCESS);
    assert!(matches!(
        usim_check(&mut usim, &m.auth_data_items[0]),
        UsimResponse::Success(_)
    ));

    // A forged AUTS (wrong MAC-S) is refused with 5004 naming SIP-Authorization.
    let mut bad = authz;
    bad[29] ^= 0xff;
    let r = e
        .mar(a, "sip:alice@hims.net", "Digest-AKAv1-MD5", 1, Some(&bad))
        .await;
    let m = maa(&r);
    assert_eq!(m.base.result, AnswerResult::ResultCode(5004));
    assert_eq!(
        m.base.failed_avp.unwrap().code,
        dict::SIP_AUTHORIZATION.code
    );
}

async fn mar_digest_schemes_and_errors(mut e: Env) {
    for scheme in ["SIP Digest", "Unknown"] {
        let r = e
            .mar("carol@hims.net", "sip:carol@hims.net", scheme, 1, None)
            .await;
        let m = maa(&r);
        assert_eq!(m.base.result, AnswerResult::SUCCESS, "{scheme}");
        let d = m.auth_data_items[0].digest.as_ref().unwrap();
        assert_eq!(
            (d.realm, d.ha1, d.qop),
            ("hims.net", "0123456789abcdef0123456789abcdef", "auth")
        );
        assert_eq!(
            m.auth_data_items[0].authentication_scheme,
            Some("SIP Digest")
        );
    }
    let r = e
        .mar(
            "carol@hims.net",
            "sip:carol@hims.net",
            "Digest-AKAv1-MD5",
            1,
            None,
        )
        .await;
    assert_eq!(maa(&r).base.result, exp(5006));
    let r = e
        .mar(
            "alice.private@hims.net",
            "sip:alice@hims.net",
            "SIP Digest",
            1,
            None,
        )
        .await;
    assert_eq!(maa(&r).base.result, exp(5006));
    let r = e
        .mar(
            "alice.private@hims.net",
            "sip:alice@hims.net",
            "NASS-Bundled",
            1,
            None,
        )
        .await;
    assert_eq!(maa(&r).base.result, exp(5006));
    let r = e
        .mar("nobody@hims.net", "sip:alice@hims.net", "Unknown", 1, None)
        .await;
    assert_eq!(maa(&r).base.result, exp(5001));
    let r = e
        .mar(
            "alice.private@hims.net",
            "sip:bob@hims.net",
            "Unknown",
            1,
            None,
        )
        .await;
    assert_eq!(maa(&r).base.result, exp(5002));
    // The asking S-CSCF is recorded.
    let v = e.store.subscriber("carol@hims.net").await.unwrap().unwrap();
    assert_eq!(v.scscf.unwrap().server_name, SCSCF);
}

async fn sar_assignment_types_and_user_data(mut e: Env) {
    let a = "alice.private@hims.net";
    // RE_REGISTRATION of an identity that is not registered (Kamailio's S-CSCF sends it for
    // a UE registering again soon after its deregistration): taken as a registration.
    let r = e
        .sar(Some(a), "sip:alice@hims.net", Sat::ReRegistration, true)
        .await;
    let s = saa(&r);
    assert_eq!(
        s.base.result,
        AnswerResult::SUCCESS,
        "re-registration of an unregistered identity"
    );
    assert!(
        s.user_data.is_none(),
        "User-Data-Already-Available honoured"
    );
    let v = e.store.subscriber(a).await.unwrap().unwrap();
    assert_eq!(v.scscf.unwrap().server_name, SCSCF);
    assert!(v.public_identities.iter().all(|p| p.reg_state == 1));
    let r = e
        .sar(
            Some(a),
            "sip:alice@hims.net",
            Sat::UserDeregistration,
            false,
        )
        .await;
    assert_eq!(saa(&r).base.result, AnswerResult::SUCCESS);
    let r = e
        .sar(Some(a), "sip:alice@hims.net", Sat::Registration, false)
        .await;
    let s = saa(&r);
    assert_eq!(s.base.result, AnswerResult::SUCCESS);
    let xml = std::str::from_utf8(s.user_data.unwrap()).unwrap();
    assert!(xml.starts_with("<?xml"));
    assert!(xml.contains("<PrivateID>alice.private@hims.net</PrivateID>"));
    assert!(xml.contains("<Identity>sip:alice@hims.net</Identity>"));
    assert!(
        xml.contains("<Identity>tel:+4930123</Identity>"),
        "the implicit registration set"
    );
    assert!(xml.contains("<InitialFilterCriteria>"));
    let v = e.store.subscriber(a).await.unwrap().unwrap();
    assert_eq!(v.scscf.unwrap().server_name, SCSCF);
    assert!(v.public_identities.iter().all(|p| p.reg_state == 1));

    let r = e
        .sar(Some(a), "sip:alice@hims.net", Sat::ReRegistration, true)
        .await;
    let s = saa(&r);
    assert_eq!(s.base.result, AnswerResult::SUCCESS);
    assert!(
        s.user_data.is_none(),
        "User-Data-Already-Available honoured"
    );

    let r = e
        .sar(
            Some(a),
            "sip:alice@hims.net",
            Sat::UserDeregistration,
            false,
        )
        .await;
    assert_eq!(saa(&r).base.result, AnswerResult::SUCCESS);
    let v = e.store.subscriber(a).await.unwrap().unwrap();
    assert!(v.scscf.is_none());
    assert!(v.public_identities.iter().all(|p| p.reg_state == 0));
    let r = e
        .sar(
            Some(a),
            "sip:alice@hims.net",
            Sat::TimeoutDeregistration,
            false,
        )
        .await;
    assert_eq!(
        saa(&r).base.result,
        AnswerResult::SUCCESS,
        "deregistering again is harmless"
    );

    // Unregistered user (terminating call to an unregistered user): profile, state 2.
    let r = e
        .sar(None, "sip:bob@hims.net", Sat::UnregisteredUser, false)
        .await;
    let s = saa(&r);
    assert_eq!(s.base.result, AnswerResult::SUCCESS);
    assert!(
        std::str::from_utf8(s.user_data.unwrap())
            .unwrap()
            .contains("bob.private@hims.net")
    );
    assert_eq!(
        e.store
            .public_identity("sip:bob@hims.net")
            .await
            .unwrap()
            .unwrap()
            .reg_state,
        2
    );

    // Store-server-name deregistration keeps the name.
    e.sar(Some(a), "sip:alice@hims.net", Sat::Registration, true)
        .await;
    let r = e
        .sar(
            Some(a),
            "sip:alice@hims.net",
            Sat::UserDeregistrationStoreServerName,
            false,
        )
        .await;
    assert_eq!(saa(&r).base.result, AnswerResult::SUCCESS);
    assert!(
        e.store
            .subscriber(a)
            .await
            .unwrap()
            .unwrap()
            .scscf
            .is_some()
    );

    let r = e
        .sar(
            Some("nobody@hims.net"),
            "sip:alice@hims.net",
            Sat::Registration,
            false,
        )
        .await;
    assert_eq!(saa(&r).base.result, exp(5001));
    let r = e
        .sar(Some(a), "sip:bob@hims.net", Sat::Registration, false)
        .await;
    assert_eq!(saa(&r).base.result, exp(5002));
    let r = e
        .sar(
            Some("eve.private@hims.net"),
            "sip:eve@hims.net",
            Sat::Registration,
            false,
        )
        .await;
    assert_eq!(
        saa(&r).base.result,
        AnswerResult::ResultCode(5003),
        "barred"
    );
    let r = e
        .sar(
            Some("eve.private@hims.net"),
            "sip:eve@hims.net",
            Sat::UserDeregistration,
            false,
        )
        .await;
    assert_eq!(
        saa(&r).base.result,
        AnswerResult::SUCCESS,
        "barring never blocks a deregistration"
    );
}

/// TS 29.228 §6.1.4.1: 5001 for an unknown identity; for one not registered and without an
/// S-CSCF, 2003 UNREGISTERED_SERVICE with Server-Capabilities only when its profile has services
/// related to the unregistered state (or the LIR is for an originating request), else 5003
/// without capabilities; the S-CSCF's name with 2001 once one is assigned, services or not.
async fn lir_answers(mut e: Env) {
    // An iFC that applies to registered users only (ProfilePartIndicator absent, triggered on
    // TERMINATING_REGISTERED), and one for the unregistered state (UNREGISTERED,
    // TERMINATING_UNREGISTERED), each on a subscriber of its own (default capabilities).
    let ifc = |ppi: &str, case: u8| {
        format!(
            "<InitialFilterCriteria><Priority>1</Priority><TriggerPoint>\
             <ConditionTypeCNF>0</ConditionTypeCNF><SPT><ConditionNegated>0</ConditionNegated>\
             <Group>0</Group><Method>INVITE</Method></SPT><SPT>\
             <ConditionNegated>0</ConditionNegated><Group>0</Group>\
             <SessionCase>{case}</SessionCase></SPT></TriggerPoint><ApplicationServer>\
             <ServerName>sip:vm.hims.net</ServerName><DefaultHandling>0</DefaultHandling>\
             </ApplicationServer>{ppi}</InitialFilterCriteria>"
        )
    };
    for (name, ifc_xml) in [
        ("dan", ifc("", 1)),
        (
            "frank",
            ifc("<ProfilePartIndicator>1</ProfilePartIndicator>", 2),
        ),
    ] {
        let mut s = aka(
            &format!("{name}.private@hims.net"),
            &[(&format!("sip:{name}@hims.net"), false)],
            &[],
            None,
        );
        s.ifc_xml = ifc_xml;
        e.store.add_subscriber(&s).await.unwrap();
    }

    let r = e.lir("sip:nobody@hims.net").await;
    assert_eq!(lia(&r).base.result, exp(5001));
    // Not registered, no S-CSCF, no unregistered-state services: carol has no iFC, dan only
    // one for the registered state.
    for impu in ["sip:carol@hims.net", "sip:dan@hims.net"] {
        let r = e.lir(impu).await;
        let l = lia(&r);
        assert_eq!(l.base.result, exp(5003), "{impu}");
        assert!(l.server_capabilities.is_none(), "{impu}");
        assert_eq!(l.server_name, None, "{impu}");
    }
    // With unregistered-state services: frank's iFC, bob's (no trigger point: it applies
    // whatever the state), with his own capability set.
    let r = e.lir("sip:frank@hims.net").await;
    let l = lia(&r);
    assert_eq!(l.base.result, exp(2003));
    assert_eq!(l.server_capabilities.unwrap().mandatory, vec![1]);
    let r = e.lir("sip:bob@hims.net").await;
    let l = lia(&r);
    assert_eq!(l.base.result, exp(2003));
    assert_eq!(l.server_capabilities.unwrap().mandatory, vec![1, 2]);
    // An originating request for carol: an S-CSCF is to be chosen all the same.
    let r = e
        .lir_as(
            "sip:carol@hims.net",
            Some(dict::OriginatingRequest::Originating),
        )
        .await;
    let l = lia(&r);
    assert_eq!(l.base.result, exp(2003));
    assert!(l.server_capabilities.is_some());

    // Registered: the S-CSCF's name, with or without unregistered-state services.
    for (impi, impu) in [
        ("bob.private@hims.net", "sip:bob@hims.net"),
        ("carol@hims.net", "sip:carol@hims.net"),
    ] {
        e.sar(Some(impi), impu, Sat::Registration, true).await;
        let r = e.lir(impu).await;
        let l = lia(&r);
        assert_eq!(
            (l.base.result, l.server_name),
            (AnswerResult::SUCCESS, Some(SCSCF)),
            "{impu}"
        );
        assert!(l.server_capabilities.is_none(), "{impu}");
    }
    // Deregistered (the S-CSCF's name cleared): carol is back to 5003.
    e.sar(
        Some("carol@hims.net"),
        "sip:carol@hims.net",
        Sat::UserDeregistration,
        true,
    )
    .await;
    let r = e.lir("sip:carol@hims.net").await;
    assert_eq!(lia(&r).base.result, exp(5003));
}

async fn sloppy_requests_are_told_what_is_wrong(mut e: Env) {
    // A UAR without User-Name: 5005 with Failed-AVP naming User-Name.
    let hdr = Header::request(dict::command::USER_AUTHORIZATION, dict::APP_CX, true, 7, 8);
    let mut b = Vec::new();
    let mut m = MessageBuilder::new(&mut b, &hdr);
    m.utf8(&dict::SESSION_ID, "icscf1.hims.net;9;9");
    m.group(&dict::VENDOR_SPECIFIC_APPLICATION_ID, |g| {
        g.u32(&dict::VENDOR_ID, dict::VENDOR_3GPP)
            .u32(&dict::AUTH_APPLICATION_ID, dict::APP_CX);
    });
    m.enumerated(&dict::AUTH_SESSION_STATE, 1)
        .utf8(&dict::ORIGIN_HOST, "icscf1.hims.net")
        .utf8(&dict::ORIGIN_REALM, "hims.net")
        .utf8(&dict::DESTINATION_REALM, "hims.net")
        .utf8(&dict::PUBLIC_IDENTITY, "sip:alice@hims.net")
        .octets(&dict::VISITED_NETWORK_IDENTIFIER, b"hims.net");
    m.finish().unwrap();
    let r = e.ask(&b).await;
    let msg = Message::parse(&r).unwrap();
    let code = msg
        .find(&dict::RESULT_CODE)
        .unwrap()
        .unwrap()
        .as_u32()
        .unwrap();
    assert_eq!(code, 5005);
    let failed = msg.find(&dict::FAILED_AVP).unwrap().unwrap();
    let inner = failed.grouped().next().unwrap().unwrap();
    assert_eq!(inner.code(), dict::USER_NAME.code);
    assert_eq!(msg.session_id().unwrap(), Some("icscf1.hims.net;9;9"));

    // A wrong value: User-Authorization-Type 7 → 5004 naming it.
    let mut b2 = b.clone();
    let hdr = Header::request(dict::command::USER_AUTHORIZATION, dict::APP_CX, true, 9, 10);
    b2.clear();
    let mut m = MessageBuilder::new(&mut b2, &hdr);
    m.utf8(&dict::SESSION_ID, "icscf1.hims.net;9;10");
    m.group(&dict::VENDOR_SPECIFIC_APPLICATION_ID, |g| {
        g.u32(&dict::VENDOR_ID, dict::VENDOR_3GPP)
            .u32(&dict::AUTH_APPLICATION_ID, dict::APP_CX);
    });
    m.enumerated(&dict::AUTH_SESSION_STATE, 1)
        .utf8(&dict::ORIGIN_HOST, "icscf1.hims.net")
        .utf8(&dict::ORIGIN_REALM, "hims.net")
        .utf8(&dict::DESTINATION_REALM, "hims.net")
        .utf8(&dict::USER_NAME, "alice.private@hims.net")
        .utf8(&dict::PUBLIC_IDENTITY, "sip:alice@hims.net")
        .octets(&dict::VISITED_NETWORK_IDENTIFIER, b"hims.net")
        .enumerated(&dict::USER_AUTHORIZATION_TYPE, 7);
    m.finish().unwrap();
    let r = e.ask(&b2).await;
    let msg = Message::parse(&r).unwrap();
    assert_eq!(
        msg.find(&dict::RESULT_CODE)
            .unwrap()
            .unwrap()
            .as_u32()
            .unwrap(),
        5004
    );
    let inner = msg
        .find(&dict::FAILED_AVP)
        .unwrap()
        .unwrap()
        .grouped()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(inner.code(), dict::USER_AUTHORIZATION_TYPE.code);

    // An unknown Cx command: 3001 with the E bit.
    let hdr = Header::request(399, dict::APP_CX, true, 11, 12);
    let mut b3 = Vec::new();
    let mut m = MessageBuilder::new(&mut b3, &hdr);
    m.utf8(&dict::SESSION_ID, "x;1;1")
        .utf8(&dict::ORIGIN_HOST, "icscf1.hims.net")
        .utf8(&dict::ORIGIN_REALM, "hims.net");
    m.finish().unwrap();
    let r = e.ask(&b3).await;
    let msg = Message::parse(&r).unwrap();
    assert_ne!(msg.header().flags & ims_diameter::header::flags::E, 0);
    assert_eq!(
        msg.find(&dict::RESULT_CODE)
            .unwrap()
            .unwrap()
            .as_u32()
            .unwrap(),
        3001
    );
}

/// tshark (Wireshark's Diameter dissector) reads every answer the HSS sent in a registration
/// and in the error cases: the right command, every AVP named (User-Data, Server-Capabilities,
/// SIP-Auth-Data-Item, Failed-AVP...), and no expert warning.
#[tokio::test]
async fn tshark_reads_every_answer() {
    let Some(tshark) = ims_testkit::require_tool("hss_cx_tshark", "tshark") else {
        return;
    };
    let Some(mut e) = env(Db::Sqlite, "tshark").await else {
        return;
    };
    let a = "alice.private@hims.net";
    e.uar(a, "sip:alice@hims.net", "vims.net", None).await;
    e.mar(a, "sip:alice@hims.net", "Digest-AKAv1-MD5", 2, None)
        .await;
    e.sar(Some(a), "sip:alice@hims.net", Sat::Registration, false)
        .await;
    e.lir("sip:alice@hims.net").await;
    e.lir("sip:bob@hims.net").await;
    e.mar(
        "carol@hims.net",
        "sip:carol@hims.net",
        "SIP Digest",
        1,
        None,
    )
    .await;
    e.uar("nobody@hims.net", "sip:nobody@hims.net", "hims.net", None)
        .await;
    e.mar(
        a,
        "sip:alice@hims.net",
        "Digest-AKAv1-MD5",
        1,
        Some(&[0u8; 30]),
    )
    .await;
    let mut w = ims_testkit::pcap::PcapWriter::new();
    let c = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 0, 0, 30), 40000);
    let h = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 0, 0, 40), 3868);
    for (i, m) in e.wire.iter().enumerate() {
        if i % 2 == 0 {
            w.tcp(c, h, m)
        } else {
            w.tcp(h, c, m)
        }
    }
    let pcap = ims_testkit::scratch_dir("hss-cx-tshark").join("cx.pcap");
    w.write(&pcap).unwrap();
    let d = ims_testkit::tshark::decode(&tshark, &pcap, &[]);
    assert!(
        d.expert_warnings.is_empty(),
        "tshark expert warnings: {:?}",
        d.expert_warnings
    );
    // Four requests and four answers of each command we sent (the R bit tells them apart).
    assert_eq!(d.verbose.matches("Request: Set").count(), e.wire.len() / 2);
    assert_eq!(
        d.verbose.matches("Request: Not set").count(),
        e.wire.len() / 2
    );
    for needle in [
        "Command Code: User-Authorization (300)",
        "Command Code: Multimedia-Auth (303)",
        "Command Code: Server-Assignment (301)",
        "Command Code: Location-Info (302)",
        "Experimental-Result-Code: DIAMETER_FIRST_REGISTRATION (2001)",
        "Experimental-Result-Code: DIAMETER_UNREGISTERED_SERVICE (2003)",
        "Experimental-Result-Code: DIAMETER_ERROR_USER_UNKNOWN (5001)",
        "AVP: 3GPP-SIP-Auth-Data-Item(612)",
        "AVP: 3GPP-SIP-Number-Auth-Items(607) l=16 f=VM- vnd=TGPP val=2",
        "AVP: Confidentiality-Key(625)",
        "AVP: Integrity-Key(626)",
        "AVP: SIP-Digest-Authenticate(635)",
        "Digest-HA1: 0123456789abcdef0123456789abcdef",
        "AVP: Server-Capabilities(603)",
        "AVP: Mandatory-Capability(604)",
        "AVP: Cx-User-Data(606)",
        "AVP: Failed-AVP(279)",
        "Result-Code: DIAMETER_INVALID_AVP_VALUE (5004)",
        "Result-Code: DIAMETER_SUCCESS (2001)",
    ] {
        assert!(d.verbose.contains(needle), "tshark did not show `{needle}`");
    }
    assert!(
        !d.verbose.contains("Unknown AVP"),
        "an AVP tshark could not name"
    );
}
