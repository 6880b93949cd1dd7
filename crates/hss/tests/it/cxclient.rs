//! A blocking Cx client for tests: a std `TcpStream` driven by our sans-io Diameter peer
//! (initiator). Shared by the HSS's tests and the daemon tests in bin/tests (`#[path]`).
#![allow(dead_code)]

use ims_diameter::cx::{Mar, RequestBase, SipAuthDataItem};
use ims_diameter::peer::{Event, Peer, PeerConfig, Role, State};
use ims_diameter::{Message, frame};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub struct CxClient {
    pub stream: TcpStream,
    pub peer: Peer,
    rx: Vec<u8>,
    /// Every event seen, in order.
    pub events: Vec<Event>,
    /// Requests the HSS sent us (RTR, PPR, DWR are answered by the peer itself).
    pub requests: Vec<Vec<u8>>,
    /// Command codes of everything received (with the R bit).
    pub seen: Vec<(u32, bool)>,
}

impl CxClient {
    /// Connects as `origin_host` and runs the capabilities exchange; `Err` carries the
    /// events when the connection did not come up.
    pub fn connect(addr: SocketAddr, origin_host: &str) -> Result<Self, Vec<Event>> {
        let mut cfg = PeerConfig::cx(origin_host, "hims.net");
        cfg.watchdog = Duration::from_secs(60);
        Self::connect_with(addr, cfg)
    }

    /// As [`CxClient::connect`], with our peer configured by `cfg` (e.g. advertising the
    /// relay application, as a Diameter relay does).
    pub fn connect_with(addr: SocketAddr, cfg: PeerConfig) -> Result<Self, Vec<Event>> {
        let stream = TcpStream::connect(addr).expect("connect to the HSS");
        let mut c = CxClient {
            stream,
            peer: Peer::new(cfg, Role::Initiator, 99),
            rx: Vec::new(),
            events: Vec::new(),
            requests: Vec::new(),
            seen: Vec::new(),
        };
        c.peer.handle_connecting(Instant::now());
        c.peer.handle_connected(Instant::now());
        c.pump_until(Duration::from_secs(5), |e| {
            matches!(e, Event::Up { .. } | Event::Down(_) | Event::Close)
        });
        if c.peer.state() == State::Open {
            Ok(c)
        } else {
            Err(c.events)
        }
    }

    /// Moves bytes and timers until `stop` matches an event or `limit` passes. Requests from
    /// the HSS are collected in `requests`; `answer` may answer them.
    pub fn pump_until(&mut self, limit: Duration, mut stop: impl FnMut(&Event) -> bool) -> bool {
        let end = Instant::now() + limit;
        let mut buf = vec![0u8; 65536];
        loop {
            while let Some(b) = self.peer.poll_transmit() {
                if self.stream.write_all(&b).is_err() {
                    self.peer.handle_disconnected(Instant::now());
                }
            }
            while let Some(e) = self.peer.poll_event() {
                if let Event::Request(r) = &e {
                    self.requests.push(r.clone());
                }
                let done = stop(&e);
                self.events.push(e);
                if done {
                    return true;
                }
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            let wake = self.peer.poll_timeout().unwrap_or(end).min(end);
            let wait = wake
                .saturating_duration_since(now)
                .max(Duration::from_millis(5));
            self.stream.set_read_timeout(Some(wait)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.peer.handle_disconnected(Instant::now());
                    // Nothing more will come: report and stop.
                    while let Some(e) = self.peer.poll_event() {
                        let done = stop(&e);
                        self.events.push(e);
                        if done {
                            return true;
                        }
                    }
                    return false;
                }
                Ok(n) => {
                    self.rx.extend_from_slice(&buf[..n]);
                    while let Ok(Some(len)) = frame(&self.rx, 1 << 20) {
                        let m: Vec<u8> = self.rx.drain(..len).collect();
                        if let Ok(msg) = Message::parse(&m) {
                            self.seen.push((msg.command_code(), msg.is_request()));
                        }
                        self.peer.handle_bytes(Instant::now(), &m);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    self.peer.handle_timeout(Instant::now())
                }
                Err(_) => self.peer.handle_disconnected(Instant::now()),
            }
        }
    }

    /// Sends requests and waits for all their answers (in request order).
    pub fn ask_many(&mut self, requests: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let handles: Vec<u64> = requests
            .into_iter()
            .map(|r| {
                self.peer
                    .send_request(Instant::now(), r)
                    .expect("peer open")
            })
            .collect();
        let mut answers: std::collections::HashMap<u64, Vec<u8>> = Default::default();
        let want = handles.len();
        self.pump_until(Duration::from_secs(20), |e| {
            if let Event::Answer { handle, bytes } = e {
                answers.insert(*handle, bytes.clone());
            }
            answers.len() == want
        });
        handles
            .iter()
            .map(|h| answers.remove(h).expect("an answer for every request"))
            .collect()
    }

    pub fn ask(&mut self, request: Vec<u8>) -> Vec<u8> {
        self.ask_many(vec![request]).remove(0)
    }
}

/// A MAR for one AKA vector.
pub fn mar(impi: &str, impu: &str, origin_host: &str) -> Vec<u8> {
    let r = Mar {
        base: RequestBase {
            session_id: "scscf1.hims.net;7;7",
            origin_host,
            origin_realm: "hims.net",
            destination_realm: "hims.net",
            ..RequestBase::default()
        },
        user_name: impi,
        public_identity: impu,
        server_name: "sip:scscf1.hims.net:6060",
        number_auth_items: 1,
        auth_data_item: SipAuthDataItem {
            authentication_scheme: Some("Digest-AKAv1-MD5"),
            ..SipAuthDataItem::default()
        },
    };
    let mut b = Vec::new();
    r.encode(&mut b).unwrap();
    b
}

/// The SQN inside the AUTN of an MAA's first vector, recovered with K/OPc like a UE would.
pub fn sqn_of(maa: &[u8], k_hex: &str, opc_hex: &str) -> u64 {
    let m = Message::parse(maa).unwrap();
    let a = ims_diameter::cx::Maa::decode(&m).unwrap();
    assert_eq!(
        a.base.result,
        ims_diameter::AnswerResult::SUCCESS,
        "MAA result"
    );
    let auth = a.auth_data_items[0].authenticate.unwrap();
    let mil = ims_aka::Milenage::new(
        &ims_aka::Key::from_hex(k_hex).unwrap(),
        &ims_aka::Opc::from_hex(opc_hex).unwrap(),
    );
    let rand = ims_aka::Rand::from_slice(&auth[..16]).unwrap();
    let autn = ims_aka::Autn::from_slice(&auth[16..]).unwrap();
    ims_aka::vector::verify_autn(&mil, &rand, &autn)
        .unwrap()
        .sqn
        .value()
}
