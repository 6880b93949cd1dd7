//! ims-store on a real SQLite file and a real PostgreSQL cluster, the same tests on each: provisioning is all-or-nothing, SQN advances never hand
//! out the same value twice (even under concurrency) and survive a reopen; the S-CSCF's and the P-CSCF's registrations come back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;

use ims_store::{
    Backend, CapabilitySet, Credentials, NewPublicIdentity, NewSubscriber, RegState, SQN_MODULUS,
    ScscfAssignment, Store, StoreError,
};
use zeroize::Zeroizing;

fn aka_subscriber(n: u32) -> NewSubscriber {
    NewSubscriber {
        name: format!("00101000000000{n}"),
        impi: format!("user{n}.private@hims.net"),
        credentials: Credentials::Aka {
            k: Zeroizing::new(vec![0x46; 16]),
            opc: Zeroizing::new(vec![0xcd; 16]),
            amf: [0x80, 0x00],
            sqn: 32,
        },
        public_identities: vec![
            NewPublicIdentity {
                impu: format!("sip:user{n}@hims.net"),
                barred: false,
                irs: 1,
            },
            NewPublicIdentity {
                impu: format!("tel:+4912345{n}"),
                barred: false,
                irs: 1,
            },
            NewPublicIdentity {
                impu: format!("sip:barred{n}@hims.net"),
                barred: true,
                irs: 2,
            },
        ],
        ifc_xml: String::new(),
        capability_set: None,
        roaming_allowed: vec!["vims.net".into()],
    }
}

fn db_url(tag: &str) -> (std::path::PathBuf, String) {
    let dir = ims_testkit::scratch_dir(tag);
    let path = dir.join("hss.sqlite");
    let url = format!("sqlite://{}", path.display());
    (path, url)
}

async fn provisioning_is_all_or_nothing(url: &str) {
    let store = Store::open(url).await.unwrap();
    let want = if url.starts_with("postgres") {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    assert_eq!(store.backend(), want);
    store.add_subscriber(&aka_subscriber(1)).await.unwrap();

    let Some(Credentials::Aka { k, opc, amf, sqn }) =
        store.credentials("user1.private@hims.net").await.unwrap()
    else {
        panic!("AKA credentials expected");
    };
    assert_eq!(
        (k.as_slice(), opc.as_slice(), amf, sqn),
        (&[0x46; 16][..], &[0xcd; 16][..], [0x80, 0], 32)
    );
    assert!(
        store
            .credentials("nobody@hims.net")
            .await
            .unwrap()
            .is_none()
    );
    let barred = store
        .public_identity("sip:barred1@hims.net")
        .await
        .unwrap()
        .unwrap();
    assert!(barred.barred);
    assert_eq!(barred.irs, 2);
    assert!(
        store
            .impi_has_impu("user1.private@hims.net", "tel:+49123451")
            .await
            .unwrap()
    );
    assert!(
        !store
            .impi_has_impu("user1.private@hims.net", "sip:user2@hims.net")
            .await
            .unwrap()
    );

    // A second subscriber whose last IMPU collides: refused, and none of it is stored.
    let mut clash = aka_subscriber(2);
    clash.public_identities.push(NewPublicIdentity {
        impu: "sip:user1@hims.net".into(),
        barred: false,
        irs: 1,
    });
    let err = store.add_subscriber(&clash).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Duplicate { what: "public identity", key } if key == "sip:user1@hims.net"),
        "{err}"
    );
    assert!(
        store
            .credentials("user2.private@hims.net")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .public_identity("sip:user2@hims.net")
            .await
            .unwrap()
            .is_none()
    );
    // ...so the corrected one goes in.
    store.add_subscriber(&aka_subscriber(2)).await.unwrap();

    // Digest subscriber; secrets never print.
    let digest = NewSubscriber {
        name: "alice".into(),
        impi: "alice@hims.net".into(),
        credentials: Credentials::Digest {
            realm: "hims.net".into(),
            ha1: Zeroizing::new("0123456789abcdef0123456789abcdef".into()),
        },
        public_identities: vec![NewPublicIdentity {
            impu: "sip:alice@hims.net".into(),
            barred: false,
            irs: 1,
        }],
        ifc_xml: "<InitialFilterCriteria/>".into(),
        capability_set: None,
        roaming_allowed: vec![],
    };
    store.add_subscriber(&digest).await.unwrap();
    let creds = store.credentials("alice@hims.net").await.unwrap().unwrap();
    assert!(!format!("{creds:?}").contains("0123456789abcdef"));
    assert!(matches!(
        store.advance_sqn("alice@hims.net", 32).await,
        Err(StoreError::NotFound { .. })
    ));

    // S-CSCF assignment follows the subscription, whichever IMPU names it.
    assert_eq!(store.scscf_for("sip:user1@hims.net").await.unwrap(), None);
    let a = ScscfAssignment {
        server_name: "sip:scscf1.hims.net:5060".into(),
        diameter_host: Some("scscf1.hims.net".into()),
    };
    store.set_scscf("tel:+49123451", Some(&a)).await.unwrap();
    assert_eq!(
        store.scscf_for("sip:user1@hims.net").await.unwrap(),
        Some(a)
    );
    store.set_scscf("sip:user1@hims.net", None).await.unwrap();
    assert_eq!(store.scscf_for("sip:user1@hims.net").await.unwrap(), None);
    assert!(matches!(
        store.set_scscf("sip:nobody@hims.net", None).await,
        Err(StoreError::NotFound { .. })
    ));

    // Deleting removes the whole subscription.
    store
        .delete_subscriber("user1.private@hims.net")
        .await
        .unwrap();
    assert!(
        store
            .public_identity("tel:+49123451")
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        store.delete_subscriber("user1.private@hims.net").await,
        Err(StoreError::NotFound { .. })
    ));

    // Bad input is named.
    let mut short_k = aka_subscriber(3);
    short_k.credentials = Credentials::Aka {
        k: Zeroizing::new(vec![1; 15]),
        opc: Zeroizing::new(vec![1; 16]),
        amf: [0, 0],
        sqn: 0,
    };
    assert!(matches!(
        store.add_subscriber(&short_k).await,
        Err(StoreError::Invalid { field: "k/opc", .. })
    ));
    assert!(matches!(
        Store::open("mysql://x").await,
        Err(StoreError::BadUrl(_))
    ));
}

async fn sqn_is_never_handed_out_twice_and_survives_reopen(url: &str) {
    let store = Store::open(url).await.unwrap();
    store.add_subscriber(&aka_subscriber(7)).await.unwrap();
    let impi = "user7.private@hims.net";

    // 8 concurrent askers, 50 vectors each, one SEQ step (32) per vector.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..50 {
                got.push(s.advance_sqn(impi, 32).await.unwrap());
            }
            got
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        for v in t.await.unwrap() {
            assert!(all.insert(v), "SQN {v} handed out twice");
        }
    }
    assert_eq!(all.len(), 400);
    assert_eq!(*all.iter().max().unwrap(), 32 + 400 * 32);
    drop(store);

    // Reopen (a restart): the SQN is where it was; migrations are idempotent.
    let store = Store::open(url).await.unwrap();
    let Some(Credentials::Aka { sqn, .. }) = store.credentials(impi).await.unwrap() else {
        panic!()
    };
    assert_eq!(sqn, 32 + 400 * 32);
    assert_eq!(store.advance_sqn(impi, 32).await.unwrap(), 32 + 401 * 32);

    // Resync sets it; the 48-bit counter wraps.
    assert_eq!(
        store.set_sqn(impi, SQN_MODULUS - 16).await.unwrap(),
        SQN_MODULUS - 16
    );
    assert_eq!(store.advance_sqn(impi, 32).await.unwrap(), 16);
    assert!(matches!(
        store.set_sqn(impi, SQN_MODULUS).await,
        Err(StoreError::Invalid { .. })
    ));
    assert!(matches!(
        store.advance_sqn("nobody", 32).await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_provisioning_is_all_or_nothing() {
    provisioning_is_all_or_nothing(&db_url("store-prov").1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_sqn_is_never_handed_out_twice() {
    sqn_is_never_handed_out_twice_and_survives_reopen(&db_url("store-sqn").1).await;
}

/// The WAL reaches the database file without a commit reaching SQLite's automatic
/// threshold: a file store checkpoints in the background every `ims_store::CHECKPOINT_EVERY`.
/// A reader of the database file alone (`immutable=1`: no WAL, no locks) sees a subscriber
/// only once a checkpoint copied it there; one small write is far below the threshold.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_wal_is_checkpointed_in_the_background() {
    use sqlx::Row;
    let (path, url) = db_url("store-checkpoint");
    let store = Store::open(&url).await.unwrap();
    store.add_subscriber(&aka_subscriber(7)).await.unwrap();
    let file_only = format!("sqlite://{}?immutable=1", path.display());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&file_only)
            .await
            .unwrap();
        // Until the first checkpoint even the schema is only in the WAL ("no such table").
        let seen = sqlx::query(
            "SELECT COUNT(*) FROM private_identity WHERE impi = 'user7.private@hims.net'",
        )
        .fetch_one(&mut conn)
        .await
        .map(|row| row.get::<i64, _>(0));
        sqlx::Connection::close(conn).await.unwrap();
        if matches!(seen, Ok(1)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the subscriber never reached the database file (no checkpoint ran): {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(store);
}

/// Under writes that never pause, the WAL still starts again from its beginning: it stays
/// near its limit while four times that is written through it. (With the background
/// checkpoints alone it never restarted and grew without bound.) A limit of 1,024 pages
/// (4 MiB) instead of the daemons' `ims_store::WAL_LIMIT_PAGES`, to keep the test short.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_wal_stays_bounded_under_writes_that_never_pause() {
    let (path, url) = db_url("store-wal-bound");
    let pages = 1024;
    let store = Store::open_with_wal_limit(&url, pages).await.unwrap();
    let limit = u64::from(pages) * 4096;
    // 64 KiB of iFC per subscriber: at least that much of WAL per commit.
    let ifc = "x".repeat(64 << 10);
    let commits = 4 * limit / (64 << 10);
    for n in 0..commits as u32 {
        let mut sub = aka_subscriber(100_000 + n);
        sub.ifc_xml = ifc.clone();
        store.add_subscriber(&sub).await.unwrap();
    }
    let wal = std::fs::metadata(path.with_extension("sqlite-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        wal <= limit + limit / 2,
        "the WAL grew to {wal} bytes over {commits} commits of 64 KiB (limit {limit})"
    );
    drop(store);
}

/// A database written before the registration tables went WITHOUT ROWID (migration 0004)
/// keeps its S-CSCF and P-CSCF registrations through it: the first three migrations run from
/// their files, rows go in with the old schema, and the store opened on it reads them back.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_registrations_survive_the_lean_tables_migration() {
    let (path, url) = db_url("store-migrate-0004");
    let old = ims_testkit::scratch_dir("store-migrations-0001-0003");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name.as_str() < "0004" {
            std::fs::copy(entry.path(), old.join(&name)).unwrap();
        }
    }
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    for sql in [
        "INSERT INTO scscf_registration VALUES ('sip:old@hims.net', 'old@hims.net', \
         'sip:scscf1.hims.net', '<IMSSubscription/>', 'sip:old@hims.net')",
        "INSERT INTO scscf_binding VALUES ('sip:old@hims.net', 'sip:old@10.0.0.1', \
         '<sip:old@10.0.0.1>', 'sip:term@pcscf1', 'c1', 7, 4102444800000)",
        "INSERT INTO pcscf_registration VALUES ('pcscf1.hims.net', 'udp', '10.0.0.1:5060', \
         'old@hims.net', '4102444800000 sip:old@10.0.0.1', 'sip:old@hims.net', \
         'sip:orig@scscf1', NULL, 4102444800000)",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool.close().await;

    let store = Store::open(&url).await.unwrap();
    let r = store
        .registration("sip:old@hims.net")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.impi, "old@hims.net");
    assert_eq!(r.user_data, "<IMSSubscription/>");
    assert_eq!(r.bindings.len(), 1);
    assert_eq!(r.bindings[0].cseq, 7);
    assert_eq!(r.bindings[0].path, ["sip:term@pcscf1"]);
    let p = store
        .pcscf_registrations("pcscf1.hims.net", 0)
        .await
        .unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].impi, "old@hims.net");
    assert_eq!(p[0].service_route, ["sip:orig@scscf1"]);
    // The registrations are writable in the new tables: a refresh replaces the binding.
    let mut again = r.clone();
    again.bindings[0].cseq = 8;
    store.save_registration(&again).await.unwrap();
    let r = store
        .registration("sip:old@hims.net")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.bindings.len(), 1);
    assert_eq!(r.bindings[0].cseq, 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_provisioning_is_all_or_nothing() {
    let Some(pg) = ims_testkit::postgres::Postgres::start("store_pg_provisioning") else {
        return;
    };
    provisioning_is_all_or_nothing(&pg.url()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_sqn_is_never_handed_out_twice() {
    let Some(pg) = ims_testkit::postgres::Postgres::start("store_pg_sqn") else {
        return;
    };
    sqn_is_never_handed_out_twice_and_survives_reopen(&pg.url()).await;
}

/// What the Cx handlers ask: roaming, registration state per implicit set, capabilities,
/// the profile for User-Data; and bulk import in batches.
async fn queries_for_cx(url: &str) {
    let store = Store::open(url).await.unwrap();
    let caps = CapabilitySet {
        name: "default".into(),
        mandatory: vec![1, 2],
        optional: vec![10],
        server_names: vec!["sip:scscf1.hims.net:5060".into()],
    };
    store.put_capability_set(&caps).await.unwrap();
    let mut sub = aka_subscriber(4);
    sub.capability_set = Some("default".into());
    store.add_subscriber(&sub).await.unwrap();
    assert_eq!(
        store.capabilities_for("tel:+49123454").await.unwrap(),
        Some(caps.clone())
    );
    let changed = CapabilitySet {
        optional: vec![],
        ..caps
    };
    store.put_capability_set(&changed).await.unwrap();
    assert_eq!(
        store.capabilities_for("sip:user4@hims.net").await.unwrap(),
        Some(changed)
    );

    assert!(
        store
            .roaming_allowed("sip:user4@hims.net", "VIMS.net", "hims.net")
            .await
            .unwrap()
    );
    assert!(
        store
            .roaming_allowed("sip:user4@hims.net", "hims.net", "hims.net")
            .await
            .unwrap()
    );
    assert!(
        !store
            .roaming_allowed("sip:user4@hims.net", "other.net", "hims.net")
            .await
            .unwrap()
    );

    // Registering one identity registers its implicit set, and only that set.
    let mut set = store
        .set_reg_state("tel:+49123454", RegState::Registered)
        .await
        .unwrap();
    set.sort();
    assert_eq!(
        set,
        vec!["sip:user4@hims.net".to_owned(), "tel:+49123454".to_owned()]
    );
    assert_eq!(
        store
            .public_identity("sip:barred4@hims.net")
            .await
            .unwrap()
            .unwrap()
            .reg_state,
        0
    );
    assert_eq!(
        store
            .public_identity("sip:user4@hims.net")
            .await
            .unwrap()
            .unwrap()
            .reg_state,
        1
    );
    assert!(matches!(
        store
            .set_reg_state("sip:x@hims.net", RegState::Registered)
            .await,
        Err(StoreError::NotFound { .. })
    ));

    let profile = store
        .profile("user4.private@hims.net")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(profile.profiles.len(), 1);
    assert_eq!(profile.profiles[0].1.len(), 3);
    assert!(store.profile("nobody").await.unwrap().is_none());

    // Bulk import: 1,000 in batches of 250; a duplicate in the third batch stops there.
    let mut many: Vec<NewSubscriber> = (1000..2000).map(aka_subscriber).collect();
    assert_eq!(
        store.import_subscribers(&many[..500], 250).await.unwrap(),
        500
    );
    many[600] = aka_subscriber(1000); // already imported
    let err = store
        .import_subscribers(&many[500..], 250)
        .await
        .unwrap_err();
    assert!(matches!(&err, StoreError::Duplicate { .. }), "{err}");
    assert!(
        store
            .credentials("user1599.private@hims.net")
            .await
            .unwrap()
            .is_none(),
        "third batch rolled back"
    );
    assert!(
        store
            .credentials("user1999.private@hims.net")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .credentials("user1499.private@hims.net")
            .await
            .unwrap()
            .is_some()
    );
}

/// The HSS's list of registered identities: only REGISTERED ones, in order, with the
/// S-CSCF and the IMPI.
async fn registered_identities_are_listed(url: &str) {
    let store = Store::open(url).await.unwrap();
    for n in [7, 8] {
        store.add_subscriber(&aka_subscriber(n)).await.unwrap();
    }
    assert!(
        store
            .registered_identities(0, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let me = ScscfAssignment {
        server_name: "sip:scscf1.hims.net:5060".into(),
        diameter_host: Some("scscf1.hims.net".into()),
    };
    let impu = "sip:user8@hims.net";
    store.set_scscf(impu, Some(&me)).await.unwrap();
    store
        .set_reg_state(impu, RegState::Registered)
        .await
        .unwrap();
    store
        .set_reg_state("sip:user7@hims.net", RegState::Unregistered)
        .await
        .unwrap();
    let all = store.registered_identities(0, 100).await.unwrap();
    // The implicit registration set is registered together: sip: and tel:.
    let impus: Vec<&str> = all.iter().map(|r| r.impu.as_str()).collect();
    assert_eq!(impus, [impu, "tel:+49123458"], "{all:?}");
    assert!(all.iter().all(
        |r| r.scscf == Some(me.clone()) && r.impi.as_deref() == Some("user8.private@hims.net")
    ));
    assert_eq!(store.registered_identities(1, 100).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_registered_identities_are_listed() {
    registered_identities_are_listed(&db_url("store-regs").1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_registered_identities_are_listed() {
    let Some(pg) = ims_testkit::postgres::Postgres::start("store_pg_regs") else {
        return;
    };
    registered_identities_are_listed(&pg.url()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_queries_for_cx() {
    queries_for_cx(&db_url("store-cx").1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_queries_for_cx() {
    let Some(pg) = ims_testkit::postgres::Postgres::start("store_pg_cx") else {
        return;
    };
    queries_for_cx(&pg.url()).await;
}

/// `Store::apply` writes a batch of eight or more as one SQL text: every kind of write
/// lands, in order (the same IMPI advanced twice in one batch gets two blocks, the last
/// state written stands), an unknown IMPI is `None`, and a name with a quote is stored as it
/// was (the literal is escaped, not interpreted). A batch of one (statement by statement)
/// gives the same answers.
async fn batched_writes(url: &str) {
    use ims_store::{IdentityKey, Write};
    let store = Store::open(url).await.unwrap();
    store.add_subscriber(&aka_subscriber(7)).await.unwrap();
    let id = store
        .subscription_id(IdentityKey::Impi("user7.private@hims.net"))
        .await
        .unwrap()
        .unwrap();
    let odd = "sip:o'brien.hims.net:5060';DROP TABLE subscription;--";
    let writes = vec![
        Write::Scscf {
            subscription_id: id,
            assignment: Some(ScscfAssignment {
                server_name: odd.into(),
                diameter_host: Some("it's.hims.net".into()),
            }),
        },
        Write::RegState {
            subscription_id: id,
            irs: 1,
            state: RegState::Registered,
        },
        Write::AdvanceSqn {
            impi: "user7.private@hims.net".into(),
            delta: 64,
        },
        Write::AdvanceSqn {
            impi: "user7.private@hims.net".into(),
            delta: 64,
        },
        Write::AdvanceSqn {
            impi: "nobody@hims.net".into(),
            delta: 64,
        },
        Write::SetSqn {
            impi: "nobody@hims.net".into(),
            sqn: 5,
        },
        // (Eight writes: a batch that goes as one SQL text.)
        Write::RegState {
            subscription_id: id,
            irs: 2,
            state: RegState::Registered,
        },
        Write::RegState {
            subscription_id: id,
            irs: 2,
            state: RegState::NotRegistered,
        },
    ];
    let out = store.apply(&writes).await.unwrap();
    assert_eq!(
        out,
        [None, None, Some(96), Some(160), None, None, None, None]
    );
    // In order: the barred set's last write stands.
    let barred = store
        .public_identity("sip:barred7@hims.net")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(barred.reg_state, RegState::NotRegistered as i64);
    let subs = store.load_subscriptions(id, id).await.unwrap();
    let scscf = subs[0].scscf.clone().unwrap();
    assert_eq!(scscf.server_name, odd);
    assert_eq!(scscf.diameter_host.as_deref(), Some("it's.hims.net"));
    let out = store
        .apply(&[Write::SetSqn {
            impi: "user7.private@hims.net".into(),
            sqn: 1000,
        }])
        .await
        .unwrap();
    assert_eq!(out, [Some(1000)]);
    let sub = store
        .subscriber("user7.private@hims.net")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sub.sqn, Some(1000));
    let impu = store
        .public_identity("sip:user7@hims.net")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(impu.reg_state, RegState::Registered as i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_batched_writes() {
    let (_, url) = db_url("store-batch");
    batched_writes(&url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_batched_writes() {
    let Some(pg) = ims_testkit::postgres::Postgres::start("store_pg_batch") else {
        return;
    };
    batched_writes(&pg.url()).await;
}

/// The S-CSCF's registrations: a save without User-Data keeps the XML stored (the S-CSCF
/// holds it in the store only and sends it when the HSS sent a new one); a new one replaces it.
async fn registration_keeps_its_user_data(url: &str) {
    let store = Store::open(url).await.unwrap();
    let mut rec = ims_store::RegistrationRecord {
        impu: "sip:user1@hims.net".into(),
        impi: "user1.private@hims.net".into(),
        scscf_name: "sip:scscf1.hims.net:5060".into(),
        user_data: "<IMSSubscription>first</IMSSubscription>".into(),
        associated_uris: vec!["sip:user1@hims.net".into()],
        bindings: vec![ims_store::BindingRecord {
            contact_uri: "sip:user1@10.0.0.1".into(),
            contact: "<sip:user1@10.0.0.1>".into(),
            path: vec!["<sip:term@pcscf1.vims.net;lr>".into()],
            call_id: "c1".into(),
            cseq: 1,
            expires_at: 1_000,
        }],
    };
    store.save_registration(&rec).await.unwrap();
    let stored = |s: &Store| {
        let s = s.clone();
        async move { s.registration("sip:user1@hims.net").await.unwrap().unwrap() }
    };
    rec.user_data = String::new();
    rec.bindings[0].cseq = 2;
    store.save_registration(&rec).await.unwrap();
    let got = stored(&store).await;
    assert_eq!(got.user_data, "<IMSSubscription>first</IMSSubscription>");
    assert_eq!(got.bindings[0].cseq, 2);
    rec.user_data = "<IMSSubscription>second</IMSSubscription>".into();
    store.save_registration(&rec).await.unwrap();
    assert_eq!(
        stored(&store).await.user_data,
        "<IMSSubscription>second</IMSSubscription>"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_registration_keeps_its_user_data() {
    registration_keeps_its_user_data(&db_url("store-userdata").1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_registration_keeps_its_user_data() {
    let Some(pg) = ims_testkit::postgres::Postgres::start("store_pg_userdata") else {
        return;
    };
    registration_keeps_its_user_data(&pg.url()).await;
}

/// The S-CSCF's group commit: the changes of one batch are applied in their order (a save
/// after a delete of the same IMPU stands, a delete after a save removes it), and a batch
/// with a change that cannot be applied leaves nothing of itself behind.
async fn registration_batches_apply_in_order(url: &str) {
    use ims_store::RegistrationWrite::{Delete, Save};
    let store = Store::open(url).await.unwrap();
    let rec = |n: u32, cseq: i64| ims_store::RegistrationRecord {
        impu: format!("sip:user{n}@hims.net"),
        impi: format!("user{n}.private@hims.net"),
        scscf_name: "sip:scscf1.hims.net:5060".into(),
        user_data: format!("<IMSSubscription>{n}</IMSSubscription>"),
        associated_uris: vec![format!("sip:user{n}@hims.net")],
        bindings: vec![ims_store::BindingRecord {
            contact_uri: format!("sip:user{n}@10.0.0.1"),
            contact: format!("<sip:user{n}@10.0.0.1>"),
            path: vec!["<sip:term@pcscf1.vims.net;lr>".into()],
            call_id: format!("c{n}"),
            cseq,
            expires_at: 1_000,
        }],
    };
    store
        .apply_registrations(&[
            Save(rec(1, 1)),
            Save(rec(2, 1)),
            Delete("sip:user1@hims.net".into()),
            Save(rec(1, 2)),
            Save(rec(3, 1)),
            Delete("sip:user3@hims.net".into()),
            Save(rec(2, 5)),
        ])
        .await
        .unwrap();
    let held = store
        .registrations_of_scscf("sip:scscf1.hims.net:5060")
        .await
        .unwrap();
    let seen: Vec<(&str, i64)> = held
        .iter()
        .map(|r| (r.impu.as_str(), r.bindings[0].cseq))
        .collect();
    assert_eq!(
        seen,
        [("sip:user1@hims.net", 2), ("sip:user2@hims.net", 5)],
        "the batch's changes in their order"
    );
    // Two bindings with one Contact URI (the binding's key) cannot be inserted: the whole
    // batch is refused, user4 included.
    let mut twice = rec(5, 1);
    twice.bindings.push(twice.bindings[0].clone());
    let refused = store
        .apply_registrations(&[Save(rec(4, 1)), Save(twice)])
        .await;
    assert!(
        refused.is_err(),
        "a duplicate binding key must fail the batch"
    );
    assert!(
        store
            .registration("sip:user4@hims.net")
            .await
            .unwrap()
            .is_none(),
        "a failed batch leaves nothing behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_registration_batches_apply_in_order() {
    registration_batches_apply_in_order(&db_url("store-regbatch").1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_registration_batches_apply_in_order() {
    let Some(pg) = ims_testkit::postgres::Postgres::start("store_pg_regbatch") else {
        return;
    };
    registration_batches_apply_in_order(&pg.url()).await;
}

/// The multi-row path of `apply_registrations` (batches of `ROWS` changes or more) leaves
/// exactly what applying the same changes one by one leaves: from the same starting rows,
/// 120 saves (with and without User-Data, 0 to 2 bindings) and deletes of 24 IMPUs in a
/// fixed pseudo-random order.
async fn registration_batches_equal_changes_one_by_one(url: &str) {
    use ims_store::RegistrationWrite::{Delete, Save};
    let store = Store::open(url).await.unwrap();
    let name = "sip:scscf-rows.hims.net:5060";
    let rec = |n: u64, step: u64, xml: bool, bindings: u64| ims_store::RegistrationRecord {
        impu: format!("sip:rows{n}@hims.net"),
        impi: format!("rows{n}.private@hims.net"),
        scscf_name: name.into(),
        user_data: if xml {
            format!("<IMSSubscription>{n}-{step}</IMSSubscription>")
        } else {
            String::new()
        },
        associated_uris: vec![format!("sip:rows{n}@hims.net"), format!("tel:+1{step}")],
        bindings: (0..bindings)
            .map(|b| ims_store::BindingRecord {
                contact_uri: format!("sip:rows{n}@10.0.{b}.1"),
                contact: format!("<sip:rows{n}@10.0.{b}.1>"),
                path: vec!["<sip:term@pcscf1.vims.net;lr>".into()],
                call_id: format!("c{n}-{step}"),
                cseq: step as i64,
                expires_at: 1_000 + step as i64,
            })
            .collect(),
    };
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let writes: Vec<ims_store::RegistrationWrite> = (0..120)
        .map(|step| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = x % 24;
            match (x >> 8) % 5 {
                0 => Delete(format!("sip:rows{n}@hims.net")),
                1 | 2 => Save(rec(n, step, false, (x >> 16) % 3)),
                _ => Save(rec(n, step, true, (x >> 16) % 3)),
            }
        })
        .collect();
    let start = || async {
        for n in 0..24 {
            store
                .apply_registrations(&[Delete(format!("sip:rows{n}@hims.net"))])
                .await
                .unwrap();
        }
        let before: Vec<_> = (0..8).map(|n| Save(rec(n, 0, true, 1))).collect();
        for w in &before {
            store
                .apply_registrations(std::slice::from_ref(w))
                .await
                .unwrap();
        }
    };
    let held = || async {
        let mut all = Vec::new();
        for r in store.registrations_of_scscf(name).await.unwrap() {
            let full = store.registration(&r.impu).await.unwrap().unwrap();
            all.push(full);
        }
        all
    };
    start().await;
    for w in &writes {
        store
            .apply_registrations(std::slice::from_ref(w))
            .await
            .unwrap();
    }
    let one_by_one = held().await;
    start().await;
    store.apply_registrations(&writes).await.unwrap();
    let batched = held().await;
    assert!(!one_by_one.is_empty());
    assert_eq!(batched, one_by_one);
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_registration_batches_equal_changes_one_by_one() {
    registration_batches_equal_changes_one_by_one(&db_url("store-regrows").1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_registration_batches_equal_changes_one_by_one() {
    let Some(pg) = ims_testkit::postgres::Postgres::start("store_pg_regrows") else {
        return;
    };
    registration_batches_equal_changes_one_by_one(&pg.url()).await;
}

/// The P-CSCF's registrations: a batch leaves each flow as its last change does (a save
/// after a delete stands, a delete after a save removes it, the second of two saves wins),
/// across more flows than one multi-row statement holds (saves, and deletions over two
/// transports); each P-CSCF reads back only its
/// own; a reopened store gives them back whole (IPv6 flows, IPsec port, lists in order);
/// expired registrations are deleted at load and expired contacts left out.
async fn pcscf_registrations_come_back(url: &str) {
    use ims_store::PcscfWrite::{Delete, Save};
    use ims_store::{FlowKey, FlowTransport, PcscfContactRecord, PcscfRegistrationRecord};
    const NOW: i64 = 1_800_000_000_000;
    let flow = |n: u16, transport| FlowKey {
        transport,
        addr: if n.is_multiple_of(2) {
            format!("10.0.{}.{}:{}", n / 200, n % 200 + 1, 5000 + n)
        } else {
            format!("[fd00::{n:x}]:{}", 5000 + n)
        }
        .parse()
        .unwrap(),
    };
    let rec = |n: u16, transport, expires_at: i64| PcscfRegistrationRecord {
        flow: flow(n, transport),
        impi: format!("user{n}.private@hims.net"),
        contacts: vec![
            PcscfContactRecord {
                uri: format!("sip:user{n}@10.0.0.1:{};transport=tcp", 5000 + n),
                expires_at,
            },
            PcscfContactRecord {
                uri: format!("sip:user{n}@10.0.0.1:{}", 6000 + n),
                expires_at: NOW - 1,
            },
        ],
        associated_uris: vec![format!("sip:user{n}@hims.net"), format!("tel:+4912345{n}")],
        service_route: vec![
            "<sip:orig@scscf1.hims.net:5060;lr>".into(),
            "<sip:as.hims.net;lr>".into(),
        ],
        ipsec_port_us: n.is_multiple_of(3).then_some(5100 + n),
    };
    let store = Store::open(url).await.unwrap();
    let later = NOW + 600_000;
    // 100 flows (more than PCSCF_ROWS), then changes to some of them in the same batch.
    let mut writes: Vec<_> = (0..100u16)
        .map(|n| Save(rec(n, FlowTransport::Udp, later)))
        .collect();
    writes.push(Delete(flow(1, FlowTransport::Udp)));
    writes.push(Delete(flow(2, FlowTransport::Udp)));
    writes.push(Save(rec(2, FlowTransport::Udp, later + 1)));
    writes.push(Save(rec(3, FlowTransport::Udp, later + 2)));
    writes.push(Save(rec(3, FlowTransport::Udp, later + 3)));
    // The same address over TCP is another flow; one that has expired by NOW.
    writes.push(Save(rec(4, FlowTransport::Tcp, later)));
    writes.push(Save(rec(5, FlowTransport::Tcp, NOW)));
    // Another P-CSCF's on the same database.
    writes.push(Save(rec(6, FlowTransport::Udp, later)));
    store
        .apply_pcscf_registrations("pcscf1.vims.net", &writes)
        .await
        .unwrap();
    store
        .apply_pcscf_registrations(
            "pcscf2.vims.net",
            &[Save(rec(7, FlowTransport::Udp, later))],
        )
        .await
        .unwrap();
    // A later batch deleting 41 UDP flows (more than one statement holds) with a TCP flow
    // nobody holds among them: each statement deletes flows of one transport.
    let mut gone: Vec<_> = (60..80u16)
        .map(|n| Delete(flow(n, FlowTransport::Udp)))
        .collect();
    gone.push(Delete(flow(999, FlowTransport::Tcp)));
    gone.extend((80..100u16).map(|n| Delete(flow(n, FlowTransport::Udp))));
    gone.push(Delete(flow(10, FlowTransport::Udp)));
    store
        .apply_pcscf_registrations("pcscf1.vims.net", &gone)
        .await
        .unwrap();
    drop(store);

    let store = Store::open(url).await.unwrap();
    let got = store
        .pcscf_registrations("pcscf1.vims.net", NOW)
        .await
        .unwrap();
    let mut want: Vec<PcscfRegistrationRecord> = (0..100u16)
        .filter(|n| ![1, 10].contains(n) && *n < 60)
        .map(|n| {
            let at = match n {
                2 => later + 1,
                3 => later + 3,
                _ => later,
            };
            let mut r = rec(n, FlowTransport::Udp, at);
            r.contacts.truncate(1); // the second had expired
            r
        })
        .collect();
    let mut tcp = rec(4, FlowTransport::Tcp, later);
    tcp.contacts.truncate(1);
    want.push(tcp);
    let key = |r: &PcscfRegistrationRecord| (r.flow.transport.as_str(), r.flow.addr.to_string());
    want.sort_by_key(key);
    let mut got_sorted = got.clone();
    got_sorted.sort_by_key(key);
    assert_eq!(got_sorted.len(), want.len());
    for (g, w) in got_sorted.iter().zip(&want) {
        assert_eq!(g, w);
    }
    assert!(got.iter().any(|r| r.ipsec_port_us == Some(5103)));
    assert!(got.iter().any(|r| r.flow.addr.is_ipv6()));
    // The expired TCP flow was deleted at load, not only left out: it is gone at an
    // earlier time too.
    let before = store
        .pcscf_registrations("pcscf1.vims.net", NOW - 10)
        .await
        .unwrap();
    assert!(
        !before.iter().any(|r| r.flow == flow(5, FlowTransport::Tcp)),
        "the expired registration was deleted"
    );
    // Each P-CSCF has its own.
    let other = store
        .pcscf_registrations("pcscf2.vims.net", NOW)
        .await
        .unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].impi, "user7.private@hims.net");
    assert!(
        store
            .pcscf_registrations("pcscf3.vims.net", NOW)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_pcscf_registrations_come_back() {
    pcscf_registrations_come_back(&db_url("store-pcscf").1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_pcscf_registrations_come_back() {
    let Some(pg) = ims_testkit::postgres::Postgres::start("store_pg_pcscf") else {
        return;
    };
    pcscf_registrations_come_back(&pg.url()).await;
}
