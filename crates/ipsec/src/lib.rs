//! IPsec for the UE–P-CSCF hop: the security agreement of RFC 3329 / TS 33.203 (Annex H) and
//! the four ESP transport-mode SAs of TS 33.203 §7, installed in the kernel through
//! [`ims_xfrm`]. Both ends use it: the P-CSCF (`ims-pcscf`) and the UE tool (`ims-ue`), so the
//! agreement's parsing and the SA table are written once.
//!
//! - [`secagree`]: picks the best acceptable `ipsec-3gpp` offer (the UE's Security-Client at
//!   the P-CSCF, the P-CSCF's Security-Server at the UE), writes Security-Server, checks the
//!   second REGISTER (Security-Verify and Security-Client). Sans-io.
//! - [`spi`]: allocates SPI pairs, unique while in use, from a range.
//! - [`sa`]: the four SAs and their policies as data ([`sa::build`], for either [`Side`]), and
//!   [`SaManager`], which installs them through an [`ims_xfrm::XfrmSocket`] — all or nothing
//!   — extends and removes them (blocking calls; async callers use `spawn_blocking`).
//!
//! A crate of its own, not a module of the P-CSCF, because the UE needs the same pieces with
//! the policies' directions flipped.

pub mod sa;
pub mod secagree;
pub mod spi;

pub use sa::{Installed, SaEntry, SaManager, SaParams, Side};
pub use secagree::{Agreement, ClientOffer, OfferError, Preferences, VerifyError};
pub use spi::{SpiAllocator, SpiExhausted, SpiPair};
