//! A wave of expiries: sixteen digest subscribers register with `expires=2` through a
//! Diameter relay between the S-CSCF and the real HSS. Once they are registered, the relay
//! holds every SAA until eight SARs are outstanding at once (or 3 s passed), so a timer that
//! deregisters one by one (a round trip each, as it did) shows a high-water mark of one and
//! takes seconds per expiry, while one that keeps several SARs in flight is answered at once.
//! The test waits for every expiry event, then checks the high-water mark, the HSS (no
//! serving S-CSCF left) and the S-CSCF's store (nothing left).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::*;

const SAR: u32 = 301;
const WAVE: usize = 16;
const HOLD_UNTIL: usize = 8;

/// What the relay saw.
#[derive(Default)]
struct Seen {
    /// SARs sent by the S-CSCF whose answers it has not got yet.
    outstanding: AtomicUsize,
    /// The most `outstanding` ever was while holding.
    high_water: AtomicUsize,
    /// Hold SAAs (after the registrations).
    hold: AtomicBool,
}

/// One Diameter message off `r`: (bytes, is a request, command code); None at EOF.
async fn frame(r: &mut (impl AsyncReadExt + Unpin)) -> Option<(Vec<u8>, bool, u32)> {
    let mut head = [0u8; 20];
    r.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[1], head[2], head[3]]) as usize;
    let mut m = head.to_vec();
    m.resize(len.max(20), 0);
    r.read_exact(&mut m[20..]).await.ok()?;
    let command = u32::from_be_bytes([0, head[5], head[6], head[7]]);
    Some((m, head[4] & 0x80 != 0, command))
}

/// Accepts the S-CSCF's connection and relays it to `hss`.
async fn relay(hss: SocketAddr, seen: Arc<Seen>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (scscf, _) = listener.accept().await.unwrap();
        let upstream = TcpStream::connect(hss).await.unwrap();
        let (mut from_scscf, mut to_scscf) = scscf.into_split();
        let (mut from_hss, mut to_hss) = upstream.into_split();
        let up = seen.clone();
        tokio::spawn(async move {
            while let Some((m, request, command)) = frame(&mut from_scscf).await {
                if request && command == SAR {
                    let now = up.outstanding.fetch_add(1, Ordering::SeqCst) + 1;
                    if up.hold.load(Ordering::SeqCst) {
                        up.high_water.fetch_max(now, Ordering::SeqCst);
                    }
                }
                if to_hss.write_all(&m).await.is_err() {
                    return;
                }
            }
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(f) = frame(&mut from_hss).await {
                if tx.send(f).is_err() {
                    return;
                }
            }
        });
        let mut held: Vec<Vec<u8>> = Vec::new();
        let mut since = Instant::now();
        loop {
            let next = tokio::time::timeout(Duration::from_millis(10), rx.recv()).await;
            match next {
                Ok(None) => return,
                Ok(Some((m, request, command))) if !request && command == SAR => {
                    if seen.hold.load(Ordering::SeqCst) {
                        if held.is_empty() {
                            since = Instant::now();
                        }
                        held.push(m);
                    } else {
                        seen.outstanding.fetch_sub(1, Ordering::SeqCst);
                        if to_scscf.write_all(&m).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(Some((m, _, _))) => {
                    if to_scscf.write_all(&m).await.is_err() {
                        return;
                    }
                }
                Err(_) => {}
            }
            let enough = seen.outstanding.load(Ordering::SeqCst) >= HOLD_UNTIL;
            if !held.is_empty() && (enough || since.elapsed() >= Duration::from_secs(3)) {
                for m in held.drain(..) {
                    seen.outstanding.fetch_sub(1, Ordering::SeqCst);
                    if to_scscf.write_all(&m).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    addr
}

fn user(i: usize) -> (String, String) {
    (
        format!("wave{i}.private@hims.net"),
        format!("sip:wave{i}@hims.net"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wave_of_expiries_keeps_several_sars_in_flight() {
    let lab = lab().await;
    for i in 0..WAVE {
        let (impi, impu) = user(i);
        let ha1 = Ha1::compute(&impi, "hims.net", b"wave");
        lab.hss_store
            .add_subscriber(&NewSubscriber {
                name: format!("wave{i}"),
                impi: impi.clone(),
                credentials: Credentials::Digest {
                    realm: "hims.net".into(),
                    ha1: Zeroizing::new(ha1.to_hex().to_string()),
                },
                public_identities: vec![NewPublicIdentity {
                    impu,
                    barred: false,
                    irs: 0,
                }],
                ifc_xml: String::new(),
                capability_set: None,
                roaming_allowed: vec![],
            })
            .await
            .unwrap();
    }
    let seen = Arc::new(Seen::default());
    let mut cfg = lab.config();
    cfg.diameter.hss = relay(lab.diameter, seen.clone()).await;
    let r = lab.registrar_with(cfg).await;
    let mut events = r.subscribe();
    for i in 0..WAVE {
        let (impi, impu) = user(i);
        let mut ue = Ue::new(&impi, &impu, &format!("<sip:wave{i}@10.0.1.{i}>;expires=2"));
        let first = r
            .handle_register(&ue.register(Some(ue.initial_auth()), &[]))
            .await;
        let (realm, nonce, alg, _, _, _) = challenge(&first);
        let auth = answer(&impi, &realm, &nonce, &alg, Qop::Auth, b"wave");
        let ok = r.handle_register(&ue.register(Some(auth), &[])).await;
        assert_eq!(ok.status(), Some(200), "{ok}");
    }
    // From now on the relay holds the SAAs: the expiries of all sixteen come within about
    // a second of each other.
    seen.hold.store(true, Ordering::SeqCst);
    let mut expired = 0;
    while expired < WAVE {
        let ev = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("every registration expires")
            .unwrap();
        if ev.kind == RegEventKind::Expired {
            expired += 1;
        }
    }
    // The SARs were in flight together...
    let store = lab_store(&lab).await;
    wait_until("every SAR TIMEOUT_DEREGISTRATION answered", || {
        seen.outstanding.load(Ordering::SeqCst) == 0
    })
    .await;
    let high = seen.high_water.load(Ordering::SeqCst);
    assert!(
        high >= HOLD_UNTIL,
        "at most {high} SAR(s) in flight at once during the wave of {WAVE} expiries"
    );
    // ... and each did its work: the HSS serves none of them from this S-CSCF any more,
    // and the S-CSCF's store holds none of them.
    for i in 0..WAVE {
        let (_, impu) = user(i);
        assert_eq!(lab.hss_view(&impu).await, (0, None), "{impu} at the HSS");
        assert!(r.registration(&impu).is_none(), "{impu} in memory");
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.registration(&impu).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "{impu} still in the store");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
