//! `ims_pcscf::ipsec` against the host kernel, inside throwaway network namespaces (root).
//!
//! On the project's machines the kernel has xfrm but no ESP (kernel-ipsec.md): policies
//! install, every ESP SA is refused with EPROTONOSUPPORT. These tests show that the startup
//! probe says so ([`XfrmError::EspUnsupported`]), that `required` turns it into one clear
//! error line and `preferred` into plain SIP, and that neither the probe nor a failed
//! `SaManager::install` (whose policies go in before its SAs fail) leaves any entry with our
//! marker behind — while entries of others stay untouched. On a kernel *with* ESP the same
//! tests check the other branch (probe available, a full set installs, extends, removes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};

use ims_aka::{EncryptionAlgorithm, IntegrityAlgorithm};
use ims_pcscf::ipsec::{
    ClientOffer, IpsecConfig, IpsecMode, ProbeOutcome, SaManager, SaParams, Side, decide, probe,
    sa::build, startup,
};
use ims_testkit::netns::Topology;
use ims_xfrm::{Direction, PolicySpec, XfrmError, XfrmSocket};

const MARKER: u32 = 0x01A5_C0DE;
const OTHER_MARKER: u32 = 0x0BAD_F00D;

fn topology(tag: &str) -> Topology {
    let mut topo = Topology::new(tag);
    topo.add_node("pcscf", "10.77.1.2/24", "fd00:77:1::2/64");
    topo
}

/// Our entries still in the kernel: (SAs, policies).
fn marked(sock: &mut XfrmSocket, marker: u32) -> (usize, usize) {
    let sas = sock
        .list_sas()
        .unwrap()
        .iter()
        .filter(|s| s.marker == marker)
        .count();
    let pols = sock
        .list_policies()
        .unwrap()
        .iter()
        .filter(|p| p.marker == marker)
        .count();
    (sas, pols)
}

fn policy(src: &str, dst: &str, marker: u32) -> PolicySpec {
    PolicySpec {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        dir: Direction::In,
        priority: 2080,
        reqid: 77,
        marker,
        hard_expires_secs: 0,
    }
}

fn params(ue_ip: &str, pcscf_ip: &str) -> SaParams {
    SaParams {
        side: Side::Pcscf,
        ue_ip: ue_ip.parse::<IpAddr>().unwrap(),
        pcscf_ip: pcscf_ip.parse::<IpAddr>().unwrap(),
        ue: ClientOffer {
            alg: IntegrityAlgorithm::HmacSha1,
            ealg: EncryptionAlgorithm::AesCbc,
            spi_c: 3_929_102,
            spi_s: 3_929_103,
            port_c: 32789,
            port_s: 5062,
            raw: "ipsec-3gpp;alg=hmac-sha-1-96;ealg=aes-cbc;spi-c=3929102;spi-s=3929103;port-c=32789;port-s=5062".into(),
        },
        spi_pc: 4096,
        spi_ps: 4097,
        port_pc: 5062,
        port_ps: 5063,
        ik: [0x11; 16],
        ck: [0x22; 16],
        lifetime_secs: 240,
        marker: MARKER,
        reqid_base: 4096,
    }
}

fn is_esp_unsupported(e: &XfrmError) -> bool {
    matches!(e, XfrmError::EspUnsupported { .. })
}

#[test]
fn probe_reports_the_kernel_and_leaves_nothing_behind() {
    if !ims_testkit::require_root("probe_reports_the_kernel_and_leaves_nothing_behind") {
        return;
    }
    let topo = topology("ipsec_probe");
    topo.enter("pcscf", || {
        let mut sock = XfrmSocket::open().unwrap();
        // Someone else's policy (another marker) must survive; a stale one of ours (a crashed
        // previous run) must go.
        let foreign = policy("10.77.1.2:7000", "10.77.1.9:7001", OTHER_MARKER);
        sock.add_policy(&foreign).unwrap();
        sock.add_policy(&policy("10.77.1.2:7002", "10.77.1.9:7003", MARKER))
            .unwrap();
        assert_eq!(marked(&mut sock, MARKER), (0, 1));

        let cfg = IpsecConfig {
            marker: MARKER,
            ..IpsecConfig::default()
        };
        let outcome = probe(&cfg);
        eprintln!("probe on this kernel: {outcome:?}");
        match &outcome {
            ProbeOutcome::Unavailable(e) => {
                assert!(is_esp_unsupported(e), "unexpected probe error: {e}");
                let err = decide(IpsecMode::Required, &outcome).unwrap_err();
                eprintln!("required: {err}");
                assert!(err.starts_with("ipsec.mode = \"required\" but "), "{err}");
                assert!(err.contains("the kernel cannot install ESP SAs ("), "{err}");
                assert!(err.contains("EPROTONOSUPPORT"), "{err}");
                assert_eq!(decide(IpsecMode::Preferred, &outcome), Ok(false));
                assert_eq!(decide(IpsecMode::Off, &outcome), Ok(false));
            }
            ProbeOutcome::Available => {
                eprintln!("NOTE: this kernel has ESP; checking the 'available' branch");
                assert_eq!(decide(IpsecMode::Required, &outcome), Ok(true));
                assert_eq!(decide(IpsecMode::Preferred, &outcome), Ok(true));
                assert_eq!(decide(IpsecMode::Off, &outcome), Ok(false));
            }
        }
        assert_eq!(marked(&mut sock, MARKER), (0, 0), "probe left entries");
        let policies = sock.list_policies().unwrap();
        assert!(
            policies
                .iter()
                .any(|p| p.marker == OTHER_MARKER && p.sport == 7000),
            "the foreign policy went: {policies:?}"
        );

        // startup() = probe + decide + log, for each mode, and again nothing left.
        let esp = matches!(outcome, ProbeOutcome::Available);
        let mode = |mode| IpsecConfig {
            mode,
            ..cfg.clone()
        };
        assert_eq!(startup(&mode(IpsecMode::Preferred)), Ok(esp));
        assert_eq!(startup(&mode(IpsecMode::Required)).is_ok(), esp);
        assert_eq!(startup(&mode(IpsecMode::Off)), Ok(false));
        assert_eq!(marked(&mut sock, MARKER), (0, 0), "startup left entries");
        sock.delete_policy(&foreign).unwrap();
    });
}

#[test]
fn install_is_all_or_nothing() {
    if !ims_testkit::require_root("install_is_all_or_nothing") {
        return;
    }
    let topo = topology("ipsec_install");
    topo.enter("pcscf", || {
        let mgr = SaManager::open().unwrap();
        let mut sock = XfrmSocket::open().unwrap();
        for (ue, us) in [("10.45.0.7", "10.77.1.2"), ("fd00:45::7", "fd00:77:1::2")] {
            let p = params(ue, us);
            // This kernel takes the policies (they go in first)...
            let set = build(&p);
            sock.add_policy(&set[0].policy).unwrap();
            sock.delete_policy(&set[0].policy).unwrap();
            match mgr.install(&p) {
                Err(e) => {
                    // ...and refuses the first SA: the four policies come out again.
                    assert!(is_esp_unsupported(&e), "{ue}: {e}");
                    assert_eq!(marked(&mut sock, MARKER), (0, 0), "{ue}: half-installed");
                }
                Ok(inst) => {
                    eprintln!("NOTE: this kernel has ESP; {ue}: the full set installed");
                    assert_eq!(marked(&mut sock, MARKER), (4, 4));
                    let sas = sock.list_sas().unwrap();
                    for e in &inst.entries {
                        let s = sas.iter().find(|s| s.id == e.sa_id()).unwrap();
                        assert_eq!((s.sport, s.dport), (e.sa.src.port(), e.sa.dst.port()));
                        assert_eq!(s.hard_expires_secs, 240);
                    }
                    mgr.extend(&inst, 3600).unwrap();
                    assert_eq!(marked(&mut sock, MARKER), (4, 4));
                    assert!(
                        sock.list_sas()
                            .unwrap()
                            .iter()
                            .filter(|s| s.marker == MARKER)
                            .all(|s| s.hard_expires_secs >= 3600)
                    );
                    mgr.remove(&inst).unwrap();
                    assert_eq!(marked(&mut sock, MARKER), (0, 0));
                }
            }
        }
    });
}

#[test]
fn failed_install_removes_the_policies_it_added() {
    if !ims_testkit::require_root("failed_install_removes_the_policies_it_added") {
        return;
    }
    let topo = topology("ipsec_rollback");
    topo.enter("pcscf", || {
        let mgr = SaManager::open().unwrap();
        let mut sock = XfrmSocket::open().unwrap();
        let p = params("10.45.0.8", "10.77.1.2");
        let set = build(&p);
        // Someone holds SA4's policy already: policies 1-3 go in, the 4th fails (EEXIST),
        // whatever the kernel's ESP support. The install must take 1-3 out again and leave
        // the entry it did not add alone.
        sock.add_policy(&set[3].policy).unwrap();
        let e = mgr.install(&p).unwrap_err();
        assert!(matches!(e, XfrmError::Exists { .. }), "{e}");
        let left: Vec<_> = sock
            .list_policies()
            .unwrap()
            .into_iter()
            .filter(|p| p.marker == MARKER)
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        let want: (SocketAddr, SocketAddr) = (set[3].policy.src, set[3].policy.dst);
        assert_eq!(
            (left[0].src, left[0].sport, left[0].dst, left[0].dport),
            (want.0.ip(), want.0.port(), want.1.ip(), want.1.port())
        );
        assert_eq!(marked(&mut sock, MARKER).0, 0);
        // remove_all_marked clears the rest.
        assert_eq!(mgr.remove_all_marked(MARKER).unwrap(), (0, 1));
        assert_eq!(marked(&mut sock, MARKER), (0, 0));
    });
}

/// The P-CSCF's per-UE SA table on this kernel: offers are checked before anything is
/// allocated, SPIs come back whenever no set results, and an install the kernel refuses (no
/// ESP here) leaves no set, no SPI and no policy behind. Bad keys are refused before the
/// kernel is asked. (Installs that succeed are shown in the VM, bin/tests/vm_chain.rs.)
#[test]
fn flows_give_everything_back_when_no_set_results() {
    if !ims_testkit::require_root("flows_give_everything_back_when_no_set_results") {
        return;
    }
    use ims_pcscf::ipsec::flows::{Flows, InstallError};
    use std::time::Duration;
    let topo = topology("ipsec_flows");
    topo.enter("pcscf", || {
        let cfg = IpsecConfig {
            marker: MARKER,
            spi_range: [4096, 4099],
            ..IpsecConfig::default()
        };
        let flows = Flows::open(&cfg).unwrap();
        let offer = "ipsec-3gpp;alg=hmac-sha-1-96;ealg=aes-cbc;spi-c=1111;spi-s=2222;port-c=5100;port-s=5101";
        // An unacceptable offer: an error naming it, no SPI taken.
        let err = flows
            .negotiate(["ipsec-3gpp;alg=hmac-sha-256;spi-c=1;spi-s=2;port-c=3;port-s=4"])
            .unwrap_err();
        assert!(err.to_string().contains("hmac-sha-256"), "{err}");
        assert_eq!(flows.spis_in_use(), 0);
        // Two agreements use the whole range (two pairs); a third finds none.
        let a = flows.negotiate([offer]).unwrap().unwrap();
        let b = flows.negotiate([offer]).unwrap().unwrap();
        assert_ne!(a.spis, b.spis);
        assert!(flows.negotiate([offer]).unwrap().is_none(), "range exhausted");
        assert_eq!(flows.spis_in_use(), 4);
        assert!(a.server.contains("spi-c=") && a.server.contains("port-s=5063"));
        // Released: usable again.
        flows.release(&b);
        assert_eq!(flows.spis_in_use(), 2);
        // Keys that are not 128-bit hex: refused, SPIs back.
        let ue: IpAddr = "10.77.1.9".parse().unwrap();
        let us: IpAddr = "10.77.1.2".parse().unwrap();
        let keys = ("00112233", "0011223344556677889900112233445566");
        let r = flows.install(a, "a@hims.net", ue, us, keys, Duration::from_secs(240));
        assert!(matches!(r, Err(InstallError::BadKeys)), "{r:?}");
        assert_eq!(flows.spis_in_use(), 0);
        // Good keys: this kernel refuses the SAs (no ESP) or accepts them (a kernel with ESP).
        let c = flows.negotiate([offer]).unwrap().unwrap();
        let keys = (
            "b40ba9a3c58b2a05bbf0d987b21bf8cb",
            "f769bcd751044604127672711c6d3441",
        );
        let mut sock = XfrmSocket::open().unwrap();
        match flows.install(c, "a@hims.net", ue, us, keys, Duration::from_secs(240)) {
            Err(InstallError::Kernel(e)) => {
                assert!(is_esp_unsupported(&e), "{e}");
                assert!(flows.is_empty());
                assert_eq!(flows.spis_in_use(), 0, "SPIs of a refused install come back");
                assert_eq!(marked(&mut sock, MARKER), (0, 0), "a refused install left entries");
            }
            Ok(key) => {
                eprintln!("NOTE: this kernel has ESP; checking the installed branch");
                assert_eq!(key, "10.77.1.9:5100".parse().unwrap());
                assert_eq!(marked(&mut sock, MARKER), (4, 4));
                assert!(flows.remove(key));
                assert_eq!(marked(&mut sock, MARKER), (0, 0));
                assert_eq!(flows.spis_in_use(), 0);
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    });
}
