//! Fuzz target for the User-Data of an SAA or PPR (TS 29.228 IMSSubscription XML), read by
//! the S-CSCF's `ims_scscf::userdata`: the input is the document. Invariants: every listed
//! identity has an implicit registration set that starts with it; and the document the HSS
//! writes (`ims_hss::cx::user_data_xml`) for what was read reads back to the same private
//! identity, service profiles, identities and barring.
#![no_main]

use ims_scscf::userdata::ImsSubscription;
use ims_store::{PublicIdentity, SubscriptionProfile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sub) = ImsSubscription::parse(data) else {
        return;
    };
    for p in sub
        .service_profiles
        .iter()
        .flat_map(|sp| &sp.public_identities)
    {
        let set = sub
            .implicit_set(&p.identity)
            .expect("a listed identity has a set");
        assert!(set[0].eq_ignore_ascii_case(&p.identity));
    }
    let profile = SubscriptionProfile {
        impi: sub.private_id.clone().unwrap_or_default(),
        profiles: sub
            .service_profiles
            .iter()
            .map(|sp| {
                let ids = sp
                    .public_identities
                    .iter()
                    .map(|p| PublicIdentity {
                        impu: p.identity.clone(),
                        subscription_id: 1,
                        irs: p.irs.unwrap_or(1),
                        barred: p.barred,
                        reg_state: 0,
                    })
                    .collect();
                (String::new(), ids)
            })
            .collect(),
    };
    let xml = ims_hss::cx::user_data_xml(&profile);
    let again = ImsSubscription::parse(xml.as_bytes())
        .unwrap_or_else(|e| panic!("the HSS's document {xml:?} does not read back: {e}"));
    assert_eq!(again.private_id.unwrap_or_default(), profile.impi);
    assert_eq!(again.service_profiles.len(), sub.service_profiles.len());
    for (a, b) in again.service_profiles.iter().zip(&sub.service_profiles) {
        let ids = |sp: &ims_scscf::userdata::ServiceProfile| {
            sp.public_identities
                .iter()
                .map(|p| (p.identity.clone(), p.barred))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(a), ids(b), "{xml:?}");
    }
});
