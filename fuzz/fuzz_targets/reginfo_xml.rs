//! Fuzz target for reginfo documents (RFC 3680), the body of a reg-event NOTIFY: read by the
//! P-CSCF (`ims_pcscf::regevent::terminated_contacts`, which contacts the network ended) and
//! by the UE (`ims_ue::registration_state`). Invariants: the P-CSCF's contact keys are
//! `host:port` with a port, each once; a document the P-CSCF reads stays readable with its
//! terminated contacts unchanged after a comment and whitespace around it.
#![no_main]

use ims_pcscf::regevent::terminated_contacts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ims_ue::registration_state(data);
    let Ok(keys) = terminated_contacts(data) else {
        return;
    };
    for (i, k) in keys.iter().enumerate() {
        let (_, port) = k.rsplit_once(':').expect("host:port");
        assert!(port.parse::<u16>().is_ok(), "{k:?}");
        assert!(!keys[..i].contains(k), "{k:?} twice");
    }
    if !data.starts_with(b"<?xml") {
        let mut wrapped = b"\n<!-- fz -->\n".to_vec();
        wrapped.extend_from_slice(data);
        wrapped.extend_from_slice(b"\n");
        if wrapped.len() <= ims_pcscf::regevent::MAX_DOC {
            let again = terminated_contacts(&wrapped);
            assert_eq!(again.as_ref().ok(), Some(&keys), "wrapped");
        }
    }
});
