//! Fuzz target for Security-Client / Security-Server / Security-Verify (RFC 3329, TS 33.203):
//! each input line is one header value of a first REGISTER. Every mechanism is parsed and
//! read; the P-CSCF's sec-agree (ims-ipsec) negotiates over the lines as it does for a UE.
//! Invariants: `same_as` is reflexive and symmetric; an agreement's Security-Server parses
//! with our SPIs and ports, the offer it chose matches its own text, and a second REGISTER
//! that echoes the Security-Server and repeats the Security-Client (in any order) passes.
#![no_main]

use ims_ipsec::secagree::{check_client_unchanged, check_verify};
use ims_ipsec::{Agreement, Preferences, SpiPair};
use ims_sip::SecMechanism;
use ims_sip::text::split_commas;
use libfuzzer_sys::fuzz_target;

fn read(m: &SecMechanism<'_>) {
    let _ = (m.is_ipsec_3gpp(), m.alg(), m.ealg(), m.prot(), m.mode());
    let _ = (m.spi_c(), m.spi_s(), m.port_c(), m.port_s(), m.q());
    let _ = m.params().count();
    assert!(m.same_as(m), "same_as is reflexive");
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<&str> = s.split('\n').collect();
    let mechs: Vec<SecMechanism<'_>> = lines
        .iter()
        .flat_map(|l| split_commas(l))
        .filter_map(|i| SecMechanism::parse(i).ok())
        .collect();
    for m in &mechs {
        read(m);
    }
    for (i, a) in mechs.iter().enumerate().take(8) {
        for b in mechs.iter().skip(i + 1).take(8) {
            assert_eq!(a.same_as(b), b.same_as(a), "same_as symmetric: {a:?} {b:?}");
        }
    }
    let spis = SpiPair {
        spi_pc: 1000,
        spi_ps: 1001,
    };
    let _ = check_verify(lines[0], lines.iter().copied().skip(1));
    let Ok(agreement) = Agreement::negotiate(
        lines.iter().copied(),
        &Preferences::default(),
        spis,
        5062,
        5064,
    ) else {
        return;
    };
    let server = SecMechanism::parse(&agreement.server).expect("our Security-Server parses");
    assert!(server.is_ipsec_3gpp());
    assert_eq!(server.spi_c().ok().flatten(), Some(1000));
    assert_eq!(server.spi_s().ok().flatten(), Some(1001));
    assert_eq!(server.port_c().ok().flatten(), Some(5062));
    assert_eq!(server.port_s().ok().flatten(), Some(5064));
    let o = &agreement.offer;
    let chosen = SecMechanism::parse(&o.raw).expect("the chosen offer parses");
    assert_eq!(chosen.spi_c().ok().flatten(), Some(o.spi_c));
    assert_eq!(chosen.spi_s().ok().flatten(), Some(o.spi_s));
    assert_eq!(chosen.port_c().ok().flatten(), Some(o.port_c));
    assert_eq!(chosen.port_s().ok().flatten(), Some(o.port_s));
    assert!(o.spi_c != o.spi_s && o.port_c != o.port_s);
    agreement
        .check_second_register(lines.iter().copied(), [agreement.server.as_str()])
        .expect("an unchanged second REGISTER passes");
    check_client_unchanged(lines.iter().copied(), lines.iter().rev().copied())
        .expect("the same Security-Client in another order passes");
});
