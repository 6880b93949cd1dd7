//! ims-net against real sockets: RFC 3263 location through our own ims-dns server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use ims_dns::{Config, DnsServer};
use ims_net::dns::{Destination, ResolveError, SipResolver, Target, Transport};

const ZONES: &str = r#"
listen = ["127.0.0.1:0"]
ttl = 60

[[zone]]
origin = "hims.net"
records = [
  { type = "NAPTR", name = "@", order = 20, preference = 50, flags = "s", service = "SIP+D2T", replacement = "_sip._tcp" },
  { type = "NAPTR", name = "@", order = 10, preference = 50, flags = "s", service = "SIP+D2U", replacement = "_sip._udp" },
  { type = "NAPTR", name = "@", order = 5, preference = 50, flags = "s", service = "E2U+sip", replacement = "ignored" },
  { type = "SRV", name = "_sip._udp", priority = 0, weight = 0, port = 5060, target = "icscf1" },
  { type = "SRV", name = "_sip._tcp", priority = 0, weight = 0, port = 5070, target = "icscf1" },
  { type = "A", name = "icscf1", address = "127.0.0.20" },
  { type = "AAAA", name = "icscf1", address = "2001:db8::20" },
  { type = "A", name = "plain", address = "127.0.0.21" },
  # SRV only (no NAPTR), two priorities and weights.
  { type = "SRV", name = "_sip._udp.srvonly", priority = 10, weight = 1, port = 5062, target = "b" },
  { type = "SRV", name = "_sip._udp.srvonly", priority = 0, weight = 5, port = 5061, target = "a" },
  { type = "SRV", name = "_sip._udp.srvonly", priority = 0, weight = 50, port = 5063, target = "c" },
  { type = "A", name = "a", address = "127.0.0.31" },
  { type = "A", name = "b", address = "127.0.0.32" },
  { type = "A", name = "c", address = "127.0.0.33" },
]
"#;

async fn dns() -> (DnsServer, SocketAddr) {
    let cfg: Config = toml::from_str(ZONES).unwrap();
    let server = DnsServer::start(&cfg).await.unwrap();
    let addr = server.local_addrs()[0];
    (server, addr)
}

fn t(addr: &str, transport: Transport) -> Target {
    Target {
        addr: addr.parse().unwrap(),
        transport,
    }
}

fn dest(host: &str) -> Destination<'_> {
    Destination {
        host,
        port: None,
        transport: None,
        sips: false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc3263_location() {
    let (server, addr) = dns().await;
    let stop = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async move {
        let _ = stop.1.await;
    }));
    let r = SipResolver::new(&[addr]).unwrap();
    use Transport::*;

    // NAPTR in order (10 UDP before 20 TCP; the E2U rule is not SIP and is skipped), each
    // through its SRV to A and AAAA.
    let got = r.resolve(&dest("hims.net")).await.unwrap();
    assert_eq!(
        got,
        vec![
            t("127.0.0.20:5060", Udp),
            t("[2001:db8::20]:5060", Udp),
            t("127.0.0.20:5070", Tcp),
            t("[2001:db8::20]:5070", Tcp),
        ]
    );
    // A transport given: its SRV only.
    let d = Destination {
        transport: Some(Tcp),
        ..dest("hims.net")
    };
    assert_eq!(
        r.resolve(&d).await.unwrap(),
        vec![t("127.0.0.20:5070", Tcp), t("[2001:db8::20]:5070", Tcp)]
    );
    // A port given: A/AAAA, no SRV.
    let d = Destination {
        port: Some(6000),
        ..dest("icscf1.hims.net")
    };
    assert_eq!(
        r.resolve(&d).await.unwrap(),
        vec![t("127.0.0.20:6000", Udp), t("[2001:db8::20]:6000", Udp)]
    );
    // No NAPTR: SRV by priority, then heavier weight first.
    assert_eq!(
        r.resolve(&dest("srvonly.hims.net")).await.unwrap(),
        vec![
            t("127.0.0.33:5063", Udp),
            t("127.0.0.31:5061", Udp),
            t("127.0.0.32:5062", Udp)
        ]
    );
    // Neither NAPTR nor SRV: A on the default port, UDP; TLS on 5061 for sips.
    assert_eq!(
        r.resolve(&dest("plain.hims.net")).await.unwrap(),
        vec![t("127.0.0.21:5060", Udp)]
    );
    let d = Destination {
        sips: true,
        ..dest("plain.hims.net")
    };
    assert_eq!(
        r.resolve(&d).await.unwrap(),
        vec![t("127.0.0.21:5061", Tls)]
    );
    // Numeric hosts need no DNS.
    let d = Destination {
        port: Some(5080),
        transport: Some(Tcp),
        ..dest("[2001:db8::1]")
    };
    assert_eq!(
        r.resolve(&d).await.unwrap(),
        vec![t("[2001:db8::1]:5080", Tcp)]
    );
    assert_eq!(
        r.resolve(&dest("10.1.2.3")).await.unwrap(),
        vec![t("10.1.2.3:5060", Udp)]
    );
    // Unknown names say so.
    let err = r.resolve(&dest("nobody.hims.net")).await.unwrap_err();
    assert!(matches!(err, ResolveError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("nobody.hims.net"), "{err}");
    assert!(matches!(
        r.resolve(&dest("")).await,
        Err(ResolveError::BadName(_))
    ));

    // Answers are cached for their TTL: with the server gone, the same lookup still works.
    stop.0.send(()).unwrap();
    task.await.unwrap().unwrap();
    let again = r.resolve(&dest("hims.net")).await.unwrap();
    assert_eq!(again.len(), 4);
    assert_eq!(again[0], t("127.0.0.20:5060", Udp));
}
