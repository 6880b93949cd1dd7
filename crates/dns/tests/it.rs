//! ims-dns against an outside judge: `dig` (ISC's client) queries the lab zones over UDP and
//! TCP and must read back exactly the RFC 3263 chain the P-CSCF follows; configuration errors
//! name the problem.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;

use ims_dns::{Config, DnsError, DnsServer};

fn lab_config() -> Config {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../configs/lab/ims-dns.toml"
    );
    let mut cfg: Config = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg
}

/// Starts the server on its own runtime thread; returns its address and a stop handle.
fn serve(
    cfg: Config,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let t = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let server = DnsServer::start(&cfg).await.unwrap();
            addr_tx.send(server.local_addrs()[0]).unwrap();
            server
                .run_until(async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
    });
    (addr_rx.recv().unwrap(), stop_tx, t)
}

fn dig(server: SocketAddr, tcp: bool, qtype: &str, name: &str) -> String {
    let mut cmd = Command::new("dig");
    cmd.arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args(["+norecurse", "+time=3", "+tries=1", "-t", qtype, name]);
    if tcp {
        cmd.arg("+tcp");
    }
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The answer section's records, whitespace-normalized.
fn answers(out: &str) -> Vec<String> {
    let mut in_answer = false;
    let mut v = Vec::new();
    for l in out.lines() {
        if l.starts_with(";; ANSWER SECTION") {
            in_answer = true;
        } else if l.starts_with(";;") || l.is_empty() {
            in_answer = false;
        } else if in_answer {
            v.push(l.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    v.sort();
    v
}

#[test]
fn rfc3263_chain_of_the_lab_zones_over_udp_and_tcp() {
    let Some(_) = ims_testkit::require_tool("dns_dig", "dig") else {
        return;
    };
    let (addr, stop, t) = serve(lab_config());
    for tcp in [false, true] {
        let out = dig(addr, tcp, "NAPTR", "hims.net");
        assert!(
            out.contains("status: NOERROR") && out.contains(" aa"),
            "authoritative: {out}"
        );
        assert_eq!(
            answers(&out),
            vec![
                "hims.net. 300 IN NAPTR 10 50 \"s\" \"SIP+D2U\" \"\" _sip._udp.hims.net.",
                "hims.net. 300 IN NAPTR 20 50 \"s\" \"SIP+D2T\" \"\" _sip._tcp.hims.net.",
            ],
            "tcp={tcp}"
        );
        assert_eq!(
            answers(&dig(addr, tcp, "SRV", "_sip._udp.hims.net")),
            vec!["_sip._udp.hims.net. 300 IN SRV 0 0 5060 icscf1.hims.net."]
        );
        assert_eq!(
            answers(&dig(addr, tcp, "A", "icscf1.hims.net")),
            vec!["icscf1.hims.net. 300 IN A 127.0.0.20"]
        );
        assert_eq!(
            answers(&dig(addr, tcp, "SRV", "_sip._tcp.vims.net")),
            vec!["_sip._tcp.vims.net. 300 IN SRV 0 0 5060 pcscf1.vims.net."]
        );
        // An unknown name in our zone: NXDOMAIN, authoritative, with the SOA.
        let out = dig(addr, tcp, "A", "nobody.hims.net");
        assert!(out.contains("status: NXDOMAIN"), "{out}");
        let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains("hims.net. 300 IN SOA ns.hims.net. hostmaster.hims.net. 1 "),
            "{out}"
        );
        // A name we are not authoritative for: REFUSED (we are not a resolver).
        assert!(dig(addr, tcp, "A", "example.com").contains("status: REFUSED"));
    }
    stop.send(()).unwrap();
    t.join().unwrap();
}

#[test]
fn aaaa_cname_and_per_record_ttl() {
    let Some(_) = ims_testkit::require_tool("dns_dig_v6", "dig") else {
        return;
    };
    let cfg: Config = toml::from_str(
        r#"
        listen = ["127.0.0.1:0"]
        [[zone]]
        origin = "ims.mnc001.mcc001.3gppnetwork.org."
        ttl = 60
        records = [
          { type = "AAAA", name = "pcscf", address = "2001:db8::10" },
          { type = "CNAME", name = "p", target = "pcscf", ttl = 5 },
          { type = "A", name = "abs", address = "192.0.2.1" },
        ]
        "#,
    )
    .unwrap();
    let (addr, stop, t) = serve(cfg);
    assert_eq!(
        answers(&dig(
            addr,
            false,
            "AAAA",
            "pcscf.ims.mnc001.mcc001.3gppnetwork.org"
        )),
        vec!["pcscf.ims.mnc001.mcc001.3gppnetwork.org. 60 IN AAAA 2001:db8::10"]
    );
    let cname = answers(&dig(
        addr,
        false,
        "CNAME",
        "p.ims.mnc001.mcc001.3gppnetwork.org",
    ));
    assert_eq!(
        cname,
        vec![
            "p.ims.mnc001.mcc001.3gppnetwork.org. 5 IN CNAME pcscf.ims.mnc001.mcc001.3gppnetwork.org."
        ]
    );
    stop.send(()).unwrap();
    t.join().unwrap();
}

#[test]
fn configuration_errors_name_the_problem() {
    // Unknown key.
    let err = toml::from_str::<Config>("listen = []\nlisten_udp = 1\n").unwrap_err();
    assert!(
        err.to_string().contains("unknown field `listen_udp`"),
        "{err}"
    );
    // Unknown record field.
    let err = toml::from_str::<Config>(
        "listen = []\n[[zone]]\norigin = \"a.net\"\nrecords = [{ type = \"A\", name = \"x\", adress = \"1.2.3.4\" }]\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("adress"), "{err}");
    // A bad name.
    let cfg: Config = toml::from_str(
        "listen = [\"127.0.0.1:0\"]\n[[zone]]\norigin = \"a.net\"\nrecords = [{ type = \"SRV\", name = \"_sip._udp\", priority = 0, weight = 0, port = 5060, target = \"bad..name\" }]\n",
    )
    .unwrap();
    let err = ims_dns::build_catalog(&cfg).err().unwrap();
    assert!(matches!(err, DnsError::BadName { .. }), "{err}");
    assert!(err.to_string().contains("SRV target `bad..name`"), "{err}");
    // The same zone twice.
    let cfg: Config = toml::from_str(
        "listen = [\"127.0.0.1:0\"]\n[[zone]]\norigin = \"a.net\"\n[[zone]]\norigin = \"a.net.\"\n",
    )
    .unwrap();
    assert!(matches!(
        ims_dns::build_catalog(&cfg),
        Err(DnsError::DuplicateZone(_))
    ));
    // Nothing to listen on, and a port in use.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let empty: Config = toml::from_str("listen = []\n").unwrap();
    assert!(matches!(
        rt.block_on(DnsServer::start(&empty)),
        Err(DnsError::NoListen)
    ));
    let busy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken: Config =
        toml::from_str(&format!("listen = [\"{}\"]\n", busy.local_addr().unwrap())).unwrap();
    let err = rt.block_on(DnsServer::start(&taken)).err().unwrap();
    assert!(
        err.to_string().starts_with("cannot bind UDP 127.0.0.1:"),
        "{err}"
    );
}

/// `GET path` over HTTP/1.1 from the admin API at `addr`: the body.
fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: dns\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[test]
fn admin_api_counts_answers_by_type_and_code() {
    let Some(_) = ims_testkit::require_tool("dns_admin", "dig") else {
        return;
    };
    // Only on loopback: the admin API has no authentication.
    let mut open = lab_config();
    open.admin_listen = Some("0.0.0.0:0".parse().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt.block_on(DnsServer::start(&open)).err().unwrap();
    assert!(matches!(err, DnsError::AdminNotLoopback(_)), "{err}");
    drop(rt);

    let mut cfg = lab_config();
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let (addrs_tx, addrs_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let t = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let server = DnsServer::start(&cfg).await.unwrap();
            addrs_tx
                .send((server.local_addrs()[0], server.admin_addr().unwrap()))
                .unwrap();
            server
                .run_until(async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
    });
    let (addr, admin) = addrs_rx.recv().unwrap();
    assert!(http_get(admin, "/health").contains("\"status\":\"ok\""));
    assert!(dig(addr, false, "A", "icscf1.hims.net").contains("status: NOERROR"));
    assert!(dig(addr, true, "A", "nobody.hims.net").contains("status: NXDOMAIN"));
    assert!(dig(addr, false, "A", "example.com").contains("status: REFUSED"));
    for tcp in [false, true] {
        assert!(dig(addr, tcp, "NAPTR", "hims.net").contains("status: NOERROR"));
    }
    let metrics = http_get(admin, "/metrics");
    for line in [
        "ims_dns_queries_total{type=\"A\",rcode=\"NOERROR\"} 1",
        "ims_dns_queries_total{type=\"A\",rcode=\"NXDOMAIN\"} 1",
        "ims_dns_queries_total{type=\"A\",rcode=\"REFUSED\"} 1",
        "ims_dns_queries_total{type=\"NAPTR\",rcode=\"NOERROR\"} 2",
        "ims_dns_queries_total{type=\"SRV\",rcode=\"NOERROR\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    stop_tx.send(()).unwrap();
    t.join().unwrap();
}
