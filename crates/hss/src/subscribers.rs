//! The HSS's subscribers in memory: Cx is answered from here, and the database is touched
//! only to load a subscription the first time it is asked for (or all of them at start, with
//! `preload`) and to write what changed, in batches.
//!
//! Why: the HSS used to make about 20 queries per registration through sqlx's SQLite worker
//! thread, and perf showed 45% of its CPU in the thread hand-offs of those queries (futex
//! waits, wake-ups) and most of the rest in SQLite: 3 ms of CPU per registration. Now a
//! request is a few hash-map look-ups, and a registration writes only what changes.
//!
//! - **Reads**: whole subscriptions ([`ims_store::SubscriptionRecord`]) indexed by IMPU and
//!   by IMPI in sharded maps; one mutex per subscription, never held across an await. What
//!   the LIR needs from the iFC XML (services related to the unregistered state,
//!   [`crate::ifc`]) is read once per profile when the subscription is loaded.
//! - **Writes** are write-through and group-committed: the change is made in memory, queued
//!   (under the subscription's lock, so that the queue has the changes of one subscription in
//!   the order memory saw them) and awaited; one writer task drains the queue and commits
//!   everything waiting in one transaction, so a request that answers has its change on disk,
//!   and 100 concurrent registrations cost one commit, not 100. Nothing is written that did
//!   not change (a re-registration's SAR writes nothing).
//! - **SQN** (TS 33.102 Annex C): vectors take their SQNs from a block reserved per IMPI
//!   (`sqn_block` steps, one `UPDATE ... RETURNING` through the writer) before any of it is
//!   handed out, so an SQN is never handed out twice, across a crash too: a crash only skips
//!   the rest of a block, which the UE accepts (SQN only has to grow). The store therefore
//!   holds the end of the reserved block, not the last SQN handed out. With several HSS
//!   front-ends on one PostgreSQL, set `sqn_block = 1`: blocks of two nodes would interleave
//!   and a UE served by both would see SQNs go back. The preload at start (the daemon's
//!   default) reserves every AKA IMPI's first block with its chunk of subscriptions, one
//!   statement per 2,000 ([`Subscribers::start_reserving`]): after a restart the first MAR of
//!   each UE writes nothing, where it used to write one random page of a large table each
//!   (the registration storm after an HSS restart). Each start thus moves every stored SQN
//!   on by a block.
//! - **Loads** go through the same writer task, after the writes queued before them: a
//!   subscription is loaded once (the writer checks again before it queries), and only the
//!   writer inserts into the maps, so two misses never make two copies. Unknown identities
//!   are not remembered: each asks the database again.
//! - **Admin changes** come through here too ([`Subscribers::forget`] after a delete,
//!   [`Subscribers::put_capability_set`], the registration changes of a deregistration).
//!   Another process writing the same database (a second HSS front-end) is not seen until the
//!   subscription is forgotten or the HSS restarts.
//! - **The last authentication of each IMPI** ([`LastAuthentication`]: what Cx told us, when,
//!   and which S-CSCF) is kept in memory only, beside the subscriptions: it is for people
//!   reading `imsctl subscriber show` about a 401 loop, no Cx answer depends on it, and
//!   writing it would add a store write to every MAR. It starts empty after a restart and
//!   goes with the subscription ([`Subscribers::forget`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use ims_net::shards::Shards;
use ims_store::{
    CapabilitySet, Credentials, IdentityKey, PublicIdentity, RegState, ScscfAssignment, Store,
    StoreError, SubscriptionProfile, SubscriptionRecord, Write,
};
use tokio::sync::{mpsc, oneshot};

/// Why the subscribers could not answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("the HSS's database writer has stopped")]
    WriterGone,
    #[error("a subscriber lock was poisoned")]
    Poisoned,
    #[error("writing to the store failed: {0}")]
    Batch(String),
}

type Result<T> = std::result::Result<T, Error>;

/// What Cx last told the HSS about an IMPI's authentication (the S-CSCF logs the likely
/// cause of a failure; Cx carries only the outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthOutcome {
    /// MAR: a vector was handed out; no answer from the S-CSCF yet.
    Challenged,
    /// MAR with AUTS: the SQN was resynchronised and a fresh vector handed out.
    Resync,
    /// MAR with AUTS whose MAC-S failed (K/OPc differ from the SIM's, or a forgery).
    ResyncRefused,
    /// SAR REGISTRATION or RE_REGISTRATION after a challenge: the UE answered right.
    Success,
    /// SAR AUTHENTICATION_FAILURE: the UE answered wrong.
    Failure,
    /// SAR AUTHENTICATION_TIMEOUT: the UE never answered the challenge.
    Timeout,
}

/// The last authentication of an IMPI ([`Subscribers::last_authentication`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastAuthentication {
    /// What happened.
    pub outcome: AuthOutcome,
    /// When the HSS learned it.
    pub at: SystemTime,
    /// The S-CSCF that asked (its Server-Name).
    pub scscf: String,
    /// Failures in a row (AUTHENTICATION_FAILURE), up to this one; 0 after a success.
    pub failures_in_a_row: u32,
}

/// One subscription in memory.
struct Sub {
    rec: SubscriptionRecord,
    /// Per IMPI (same order as `rec.private_identities`): the SQN block it may hand out from.
    sqn: Vec<Option<SqnBlock>>,
    /// Per service profile (same order as `rec.profiles`): whether its iFCs hold services
    /// related to the unregistered state ([`crate::ifc`]), read once here, not per LIR.
    unregistered_services: Vec<bool>,
}

/// SQNs reserved in the store and not handed out yet: `(last, end]` in steps.
#[derive(Debug, Clone, Copy)]
struct SqnBlock {
    last: u64,
    end: u64,
}

impl Sub {
    fn identities(&self) -> impl Iterator<Item = &PublicIdentity> {
        self.rec.profiles.iter().flat_map(|(_, ids)| ids.iter())
    }

    fn identity(&self, impu: &str) -> Option<&PublicIdentity> {
        self.identities().find(|p| p.impu == impu)
    }

    fn impi(&self, impi: &str) -> Option<usize> {
        self.rec
            .private_identities
            .iter()
            .position(|p| p.impi == impi)
    }

    fn any_registered(&self) -> bool {
        self.identities()
            .any(|p| p.reg_state == RegState::Registered as i64)
    }
}

type Shared = Arc<Mutex<Sub>>;

fn lock(s: &Shared) -> Result<MutexGuard<'_, Sub>> {
    s.lock().map_err(|_| Error::Poisoned)
}

/// An [`IdentityKey`] that can travel to the writer task.
enum OwnedKey {
    Impu(String),
    Impi(String),
}

impl OwnedKey {
    fn new(key: IdentityKey<'_>) -> Self {
        match key {
            IdentityKey::Impu(k) => Self::Impu(k.to_owned()),
            IdentityKey::Impi(k) => Self::Impi(k.to_owned()),
        }
    }

    fn key(&self) -> IdentityKey<'_> {
        match self {
            Self::Impu(k) => IdentityKey::Impu(k),
            Self::Impi(k) => IdentityKey::Impi(k),
        }
    }
}

/// What the writer task is asked to do.
enum Job {
    Write(Write, oneshot::Sender<Result<Option<u64>>>),
    Load(OwnedKey, oneshot::Sender<Result<Option<Shared>>>),
    /// Load the subscriptions added since the last preload (in chunks, between other work);
    /// `true` at start: reserve SQN blocks ahead for them (subscribers provisioned later
    /// reserve at their first MAR, so their stored SQN stays what was provisioned).
    Preload(bool),
    /// This subscription id was deleted: SQLite may give it (or any above the new maximum)
    /// to the next subscription added, so the next preload starts at or below it.
    Deleted(i64),
}

struct Maps {
    by_impu: Shards<String, Shared>,
    by_impi: Shards<String, Shared>,
    /// Subscriptions in memory.
    count: AtomicU64,
    /// Transactions committed by the writer, and the writes in them.
    batches: AtomicU64,
    writes: AtomicU64,
}

impl Maps {
    fn get(&self, key: IdentityKey<'_>) -> Option<Shared> {
        match key {
            IdentityKey::Impu(k) => self.by_impu.with(k, |m| m.get(k).cloned()).flatten(),
            IdentityKey::Impi(k) => self.by_impi.with(k, |m| m.get(k).cloned()).flatten(),
        }
    }

    /// Indexes `rec` unless it is in memory already (a newer copy: keep that one).
    fn insert(&self, rec: SubscriptionRecord) -> Shared {
        let first = rec
            .profiles
            .iter()
            .flat_map(|(_, ids)| ids.iter())
            .next()
            .map(|p| p.impu.clone());
        if let Some(existing) = first.and_then(|k| self.get(IdentityKey::Impu(&k))) {
            return existing;
        }
        let impus: Vec<String> = rec
            .profiles
            .iter()
            .flat_map(|(_, ids)| ids.iter().map(|p| p.impu.clone()))
            .collect();
        let impis: Vec<String> = rec
            .private_identities
            .iter()
            .map(|p| p.impi.clone())
            .collect();
        let unregistered_services = rec
            .profiles
            .iter()
            .map(|(ifc, _)| {
                crate::ifc::has_unregistered_services(ifc).unwrap_or_else(|e| {
                    tracing::warn!(
                        subscription = rec.id,
                        error = %e,
                        "unreadable iFC: the profile counts as without unregistered services"
                    );
                    false
                })
            })
            .collect();
        let sub = Arc::new(Mutex::new(Sub {
            sqn: vec![None; rec.private_identities.len()],
            unregistered_services,
            rec,
        }));
        for k in impus {
            self.by_impu.with(&k, |m| m.insert(k.clone(), sub.clone()));
        }
        for k in impis {
            self.by_impi.with(&k, |m| m.insert(k.clone(), sub.clone()));
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        sub
    }
}

/// The subscribers, as the Cx handler and the admin API see them.
pub struct Subscribers {
    preload: bool,
    maps: Arc<Maps>,
    /// The last authentication per IMPI (memory only: see the module docs).
    auth: Shards<String, LastAuthentication>,
    caps: Mutex<HashMap<String, Option<CapabilitySet>>>,
    jobs: mpsc::UnboundedSender<Job>,
    store: Store,
    sqn_block: u64,
}

impl Subscribers {
    /// Starts the writer task on `store` (it stops when this is dropped); with `preload`, it
    /// loads every subscription in the background, between other work.
    pub fn start(store: Store, sqn_block: u32, preload: bool) -> Arc<Self> {
        Self::start_reserving(store, sqn_block, preload, None)
    }

    /// As [`Subscribers::start`]; with `preload` and `sqn_step` (the SQN step of the HSS's
    /// scheme, 2^IND) and a `sqn_block` above 1, the preload also reserves a block of
    /// `sqn_block` steps for every AKA IMPI it loads, one statement per chunk of
    /// subscriptions: their first MARs then take SQNs from memory, with no write to wait
    /// for. Each start moves every SQN on by a block, which the USIMs accept (SQN only has
    /// to grow, by less than TS 33.102's Δ).
    pub fn start_reserving(
        store: Store,
        sqn_block: u32,
        preload: bool,
        sqn_step: Option<u64>,
    ) -> Arc<Self> {
        let maps = Arc::new(Maps {
            by_impu: Shards::new(),
            by_impi: Shards::new(),
            count: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        });
        let (jobs, rx) = mpsc::unbounded_channel();
        let ahead = sqn_step
            .filter(|_| sqn_block > 1)
            .map(|step| u64::from(sqn_block) * step);
        tokio::spawn(writer(store.clone(), maps.clone(), rx, ahead));
        if preload {
            let _ = jobs.send(Job::Preload(true));
        }
        Arc::new(Self {
            preload,
            maps,
            auth: Shards::new(),
            caps: Mutex::new(HashMap::new()),
            jobs,
            store,
            sqn_block: u64::from(sqn_block.max(1)),
        })
    }

    /// The store behind (admin reads that need no memory state).
    pub fn store(&self) -> &Store {
        &self.store
    }

    async fn sub(&self, key: IdentityKey<'_>) -> Result<Option<Shared>> {
        if let Some(s) = self.maps.get(key) {
            return Ok(Some(s));
        }
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Load(OwnedKey::new(key), tx))
            .map_err(|_| Error::WriterGone)?;
        rx.await.map_err(|_| Error::WriterGone)?
    }

    /// Queues `w` (call it with the subscription locked) and returns its outcome's receiver.
    fn queue(&self, w: Write) -> Result<oneshot::Receiver<Result<Option<u64>>>> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Write(w, tx))
            .map_err(|_| Error::WriterGone)?;
        Ok(rx)
    }

    async fn written(rx: oneshot::Receiver<Result<Option<u64>>>) -> Result<Option<u64>> {
        rx.await.map_err(|_| Error::WriterGone)?
    }

    // ----- reads -----

    /// A public identity, or `None`.
    pub async fn public_identity(&self, impu: &str) -> Result<Option<PublicIdentity>> {
        let Some(s) = self.sub(IdentityKey::Impu(impu)).await? else {
            return Ok(None);
        };
        Ok(lock(&s)?.identity(impu).cloned())
    }

    /// The credentials of `impi`, or `None` for an unknown user.
    pub async fn credentials(&self, impi: &str) -> Result<Option<Credentials>> {
        let Some(s) = self.sub(IdentityKey::Impi(impi)).await? else {
            return Ok(None);
        };
        let g = lock(&s)?;
        Ok(g.impi(impi)
            .map(|i| g.rec.private_identities[i].credentials.clone()))
    }

    /// Whether `impi` may use `impu`.
    pub async fn impi_has_impu(&self, impi: &str, impu: &str) -> Result<bool> {
        let Some(s) = self.sub(IdentityKey::Impi(impi)).await? else {
            return Ok(false);
        };
        let g = lock(&s)?;
        Ok(g.impi(impi)
            .is_some_and(|i| g.rec.private_identities[i].impus.iter().any(|p| p == impu)))
    }

    /// Whether the subscription owning `impu` may register from `visited`; the home network
    /// always may.
    pub async fn roaming_allowed(&self, impu: &str, visited: &str, home: &str) -> Result<bool> {
        if visited.eq_ignore_ascii_case(home) {
            return Ok(true);
        }
        let Some(s) = self.sub(IdentityKey::Impu(impu)).await? else {
            return Ok(false);
        };
        Ok(lock(&s)?
            .rec
            .roaming_allowed
            .iter()
            .any(|v| v.eq_ignore_ascii_case(visited)))
    }

    /// The S-CSCF serving the subscription that owns `impu`.
    pub async fn scscf_for(&self, impu: &str) -> Result<Option<ScscfAssignment>> {
        let Some(s) = self.sub(IdentityKey::Impu(impu)).await? else {
            return Ok(None);
        };
        Ok(lock(&s)?.rec.scscf.clone())
    }

    /// Whether the service profile of `impu` has services related to the unregistered state
    /// ([`crate::ifc`]; `false` for an unknown identity).
    pub async fn unregistered_services(&self, impu: &str) -> Result<bool> {
        let Some(s) = self.sub(IdentityKey::Impu(impu)).await? else {
            return Ok(false);
        };
        let g = lock(&s)?;
        Ok(g.rec
            .profiles
            .iter()
            .zip(&g.unregistered_services)
            .any(|((_, ids), &unreg)| unreg && ids.iter().any(|p| p.impu == impu)))
    }

    /// The capability set of the subscription owning `impu` (`None` when it has none).
    pub async fn capabilities_for(&self, impu: &str) -> Result<Option<CapabilitySet>> {
        let Some(s) = self.sub(IdentityKey::Impu(impu)).await? else {
            return Ok(None);
        };
        let Some(name) = lock(&s)?.rec.capability_set.clone() else {
            return Ok(None);
        };
        let known = self
            .caps
            .lock()
            .map_err(|_| Error::Poisoned)?
            .get(&name)
            .cloned();
        if let Some(c) = known {
            return Ok(c);
        }
        let c = self.store.capability_set(&name).await?;
        self.caps
            .lock()
            .map_err(|_| Error::Poisoned)?
            .insert(name, c.clone());
        Ok(c)
    }

    /// The first (in IMPU order) public identity `impi` may use.
    pub async fn first_impu(&self, impi: &str) -> Result<Option<String>> {
        let Some(s) = self.sub(IdentityKey::Impi(impi)).await? else {
            return Ok(None);
        };
        let g = lock(&s)?;
        Ok(g.impi(impi)
            .and_then(|i| g.rec.private_identities[i].impus.first().cloned()))
    }

    /// The first (in IMPI order) private identity allowed to use `impu`.
    pub async fn impi_of(&self, impu: &str) -> Result<Option<String>> {
        let Some(s) = self.sub(IdentityKey::Impu(impu)).await? else {
            return Ok(None);
        };
        Ok(lock(&s)?
            .rec
            .private_identities
            .iter()
            .find(|p| p.impus.iter().any(|u| u == impu))
            .map(|p| p.impi.clone()))
    }

    /// The service profiles of the subscription owning `impi`, for User-Data.
    pub async fn profile(&self, impi: &str) -> Result<Option<SubscriptionProfile>> {
        let Some(s) = self.sub(IdentityKey::Impi(impi)).await? else {
            return Ok(None);
        };
        let g = lock(&s)?;
        if g.impi(impi).is_none() {
            return Ok(None);
        }
        Ok(Some(SubscriptionProfile {
            impi: impi.to_owned(),
            profiles: g.rec.profiles.clone(),
        }))
    }

    // ----- changes -----

    /// Assigns (`Some`) or clears (`None`) the S-CSCF of the subscription owning `impu`.
    pub async fn set_scscf(&self, impu: &str, a: Option<&ScscfAssignment>) -> Result<()> {
        self.change_scscf(impu, a, false).await
    }

    /// Records `a` as the S-CSCF unless an identity of the subscription is registered (MAR:
    /// TS 29.228 §6.3).
    pub async fn record_scscf_unless_registered(
        &self,
        impu: &str,
        a: &ScscfAssignment,
    ) -> Result<()> {
        self.change_scscf(impu, Some(a), true).await
    }

    async fn change_scscf(
        &self,
        impu: &str,
        a: Option<&ScscfAssignment>,
        unless_registered: bool,
    ) -> Result<()> {
        let Some(s) = self.sub(IdentityKey::Impu(impu)).await? else {
            return Err(StoreError::NotFound {
                what: "public identity",
                key: impu.to_owned(),
            }
            .into());
        };
        let rx = {
            let mut g = lock(&s)?;
            if g.rec.scscf.as_ref() == a || (unless_registered && g.any_registered()) {
                return Ok(());
            }
            g.rec.scscf = a.cloned();
            self.queue(Write::Scscf {
                subscription_id: g.rec.id,
                assignment: a.cloned(),
            })?
        };
        Self::written(rx).await.map(|_| ())
    }

    /// Sets the registration state of the implicit registration set of `impu`.
    pub async fn set_reg_state(&self, impu: &str, state: RegState) -> Result<()> {
        let not_found = || {
            Error::Store(StoreError::NotFound {
                what: "public identity",
                key: impu.to_owned(),
            })
        };
        let Some(s) = self.sub(IdentityKey::Impu(impu)).await? else {
            return Err(not_found());
        };
        let rx = {
            let mut g = lock(&s)?;
            let irs = g.identity(impu).ok_or_else(not_found)?.irs;
            let mut changed = false;
            for (_, ids) in &mut g.rec.profiles {
                for p in ids.iter_mut().filter(|p| p.irs == irs) {
                    changed |= p.reg_state != state as i64;
                    p.reg_state = state as i64;
                }
            }
            if !changed {
                return Ok(());
            }
            self.queue(Write::RegState {
                subscription_id: g.rec.id,
                irs,
                state,
            })?
        };
        Self::written(rx).await.map(|_| ())
    }

    /// Takes `n` SQNs `step` apart for `impi` and returns the last (the others precede it by
    /// `step` each); `None` when `impi` is not an AKA subscriber. Reserves a new block in the
    /// store first when the current one has fewer than `n` left.
    pub async fn take_sqns(&self, impi: &str, n: u64, step: u64) -> Result<Option<u64>> {
        let Some(s) = self.sub(IdentityKey::Impi(impi)).await? else {
            return Ok(None);
        };
        let want = n.max(1) * step;
        {
            let mut g = lock(&s)?;
            let Some(i) = g.impi(impi) else {
                return Ok(None);
            };
            if let Some(b) = &mut g.sqn[i]
                && b.end.saturating_sub(b.last) >= want
            {
                b.last += want;
                return Ok(Some(b.last % ims_store::SQN_MODULUS));
            }
        }
        let reserve = n.max(self.sqn_block) * step;
        let rx = self.queue(Write::AdvanceSqn {
            impi: impi.to_owned(),
            delta: reserve,
        })?;
        let Some(end) = Self::written(rx).await? else {
            return Ok(None);
        };
        // The block is (end - reserve, end]; ours is its first `want`.
        let start = (end + ims_store::SQN_MODULUS - reserve) % ims_store::SQN_MODULUS;
        let last = start + want;
        let mut g = lock(&s)?;
        if let Some(i) = g.impi(impi) {
            let end = start + reserve;
            if g.sqn[i].is_none_or(|b| b.end < end) {
                g.sqn[i] = Some(SqnBlock { last, end });
            }
        }
        Ok(Some(last % ims_store::SQN_MODULUS))
    }

    /// Sets the SQN of `impi` (resynchronisation): the next vectors follow it.
    pub async fn set_sqn(&self, impi: &str, sqn: u64) -> Result<()> {
        if let Some(s) = self.sub(IdentityKey::Impi(impi)).await? {
            let mut g = lock(&s)?;
            if let Some(i) = g.impi(impi) {
                g.sqn[i] = None;
            }
        }
        let rx = self.queue(Write::SetSqn {
            impi: impi.to_owned(),
            sqn,
        })?;
        match Self::written(rx).await? {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound {
                what: "AKA private identity",
                key: impi.to_owned(),
            }
            .into()),
        }
    }

    // ----- authentication outcomes -----

    /// Records what Cx told about `impi`'s authentication, asked by `scscf`. A success is
    /// recorded only after a challenge (a re-registration the S-CSCF did not challenge is no
    /// authentication).
    pub fn record_authentication(&self, impi: &str, outcome: AuthOutcome, scscf: &str) {
        self.auth.with(impi, |m| {
            let before = m.get(impi);
            if outcome == AuthOutcome::Success
                && !before.is_some_and(|b| {
                    matches!(b.outcome, AuthOutcome::Challenged | AuthOutcome::Resync)
                })
            {
                return;
            }
            let failures_in_a_row = match outcome {
                AuthOutcome::Success => 0,
                AuthOutcome::Failure => before.map_or(0, |b| b.failures_in_a_row) + 1,
                _ => before.map_or(0, |b| b.failures_in_a_row),
            };
            let at = SystemTime::now();
            // Every MAR and SAR of a registration passes here: an IMPI seen before is updated
            // in place, without allocating its key or (same S-CSCF) the server name again.
            if let Some(e) = m.get_mut(impi) {
                e.outcome = outcome;
                e.at = at;
                e.failures_in_a_row = failures_in_a_row;
                if e.scscf != scscf {
                    scscf.clone_into(&mut e.scscf);
                }
                return;
            }
            m.insert(
                impi.to_owned(),
                LastAuthentication {
                    outcome,
                    at,
                    scscf: scscf.to_owned(),
                    failures_in_a_row,
                },
            );
        });
    }

    /// The last authentication of `impi` since the HSS started, if any.
    pub fn last_authentication(&self, impi: &str) -> Option<LastAuthentication> {
        self.auth.with(impi, |m| m.get(impi).cloned()).flatten()
    }

    // ----- admin -----

    /// Forgets the subscription of `impi` (deleted or replaced in the store): the next request
    /// loads it again.
    pub fn forget(&self, impi: &str) -> Result<()> {
        self.auth.with(impi, |m| m.remove(impi));
        let Some(s) = self.maps.get(IdentityKey::Impi(impi)) else {
            return Ok(());
        };
        let g = lock(&s)?;
        for p in g.identities() {
            self.maps.by_impu.with(&p.impu, |m| m.remove(&p.impu));
        }
        for p in &g.rec.private_identities {
            self.auth.with(&p.impi, |m| m.remove(&p.impi));
        }
        let mut removed = false;
        for p in &g.rec.private_identities {
            removed |= self
                .maps
                .by_impi
                .with(&p.impi, |m| m.remove(&p.impi))
                .flatten()
                .is_some();
        }
        // Counted once, by whichever of two concurrent forgets removed it.
        if removed {
            self.maps.count.fetch_sub(1, Ordering::Relaxed);
        }
        let _ = self.jobs.send(Job::Deleted(g.rec.id));
        Ok(())
    }

    /// Subscribers were added to the store: with `preload`, load them into memory now (in the
    /// background), so that their first requests need no database.
    pub fn added(&self) {
        if self.preload {
            let _ = self.jobs.send(Job::Preload(false));
        }
    }

    /// A capability set was created or replaced.
    pub fn put_capability_set(&self, c: &CapabilitySet) -> Result<()> {
        self.caps
            .lock()
            .map_err(|_| Error::Poisoned)?
            .insert(c.name.clone(), Some(c.clone()));
        Ok(())
    }

    /// Subscriptions in memory.
    pub fn loaded(&self) -> usize {
        self.maps.count.load(Ordering::Relaxed) as usize
    }

    /// (transactions committed, writes in them) since start.
    pub fn write_stats(&self) -> (u64, u64) {
        (
            self.maps.batches.load(Ordering::Relaxed),
            self.maps.writes.load(Ordering::Relaxed),
        )
    }
}

/// Subscriptions per preload query.
const PRELOAD_CHUNK: i64 = 2_000;

/// The writer task: group-commits the queued writes, then serves the queued loads, then
/// preloads one chunk when nothing else waits.
async fn writer(
    store: Store,
    maps: Arc<Maps>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    ahead: Option<u64>,
) {
    // Preloading ids (next, max); every id up to `high` has been preloaded.
    let mut preload_at: Option<(i64, i64)> = None;
    let mut high = 0i64;
    // The subscriptions of the preload at start, whose SQN blocks are reserved ahead.
    let mut reserve_upto = 0i64;
    let mut started = std::time::Instant::now();
    let mut jobs = Vec::with_capacity(256);
    loop {
        jobs.clear();
        if let Some((next, max)) = preload_at {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty) => {
                    let last = (next + PRELOAD_CHUNK - 1).min(max);
                    match store.load_subscriptions(next, last).await {
                        Ok(recs) => {
                            for r in recs {
                                maps.insert(r);
                            }
                            if let Some(delta) = ahead.filter(|_| next <= reserve_upto) {
                                let ids = (next, last.min(reserve_upto));
                                reserve_ahead(&store, &maps, ids, delta).await;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "HSS preload stopped: subscriptions load on demand");
                            preload_at = None;
                            continue;
                        }
                    }
                    high = last;
                    if last >= max {
                        tracing::info!(
                            subscriptions = maps.count.load(Ordering::Relaxed),
                            seconds = started.elapsed().as_secs_f64(),
                            "HSS preload done"
                        );
                        preload_at = None;
                    } else {
                        preload_at = Some((last + 1, max));
                    }
                    continue;
                }
            }
            while jobs.len() < 1024 {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
        } else if rx.recv_many(&mut jobs, 1024).await == 0 {
            return;
        }
        let mut writes = Vec::new();
        let mut waiting = Vec::new();
        let mut loads = Vec::new();
        for j in jobs.drain(..) {
            match j {
                Job::Write(w, tx) => {
                    writes.push(w);
                    waiting.push(tx);
                }
                Job::Load(k, tx) => loads.push((k, tx)),
                Job::Deleted(id) => high = high.min(id - 1),
                Job::Preload(at_start) => match store.max_subscription_id().await {
                    Ok(max) if max > high => {
                        if at_start {
                            reserve_upto = max;
                        }
                        if preload_at.is_none() {
                            started = std::time::Instant::now();
                        }
                        preload_at =
                            Some((preload_at.map_or(high + 1, |(n, _)| n.min(high + 1)), max));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "HSS preload: cannot read the subscriptions");
                    }
                },
            }
        }
        if !writes.is_empty() {
            match store.apply(&writes).await {
                Ok(out) => {
                    maps.batches.fetch_add(1, Ordering::Relaxed);
                    maps.writes
                        .fetch_add(writes.len() as u64, Ordering::Relaxed);
                    for (tx, o) in waiting.into_iter().zip(out) {
                        let _ = tx.send(Ok(o));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, writes = writes.len(), "HSS write batch failed");
                    let why = e.to_string();
                    for tx in waiting {
                        let _ = tx.send(Err(Error::Batch(why.clone())));
                    }
                }
            }
        }
        for (k, tx) in loads {
            let _ = tx.send(load(&store, &maps, k.key()).await);
        }
    }
}

/// Reserves a block of `delta` SQNs for every AKA IMPI of the subscriptions `ids` (just
/// preloaded) and hands each to its subscription in memory, unless it holds a later one. A
/// failure is one warning: those IMPIs reserve at their first MAR, as without this.
async fn reserve_ahead(store: &Store, maps: &Maps, ids: (i64, i64), delta: u64) {
    let ends = match store.reserve_sqns(ids.0, ids.1, delta).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "HSS preload: SQN blocks not reserved ahead");
            return;
        }
    };
    for (impi, end) in ends {
        let Some(s) = maps.get(IdentityKey::Impi(&impi)) else {
            continue;
        };
        let Ok(mut g) = s.lock() else { continue };
        let Some(i) = g.impi(&impi) else { continue };
        // The block is (end - delta, end], as take_sqns reckons its own.
        let start = (end + ims_store::SQN_MODULUS - delta) % ims_store::SQN_MODULUS;
        let end = start + delta;
        if g.sqn[i].is_none_or(|b| b.end < end) {
            g.sqn[i] = Some(SqnBlock { last: start, end });
        }
    }
}

async fn load(store: &Store, maps: &Maps, key: IdentityKey<'_>) -> Result<Option<Shared>> {
    if let Some(s) = maps.get(key) {
        return Ok(Some(s));
    }
    let Some(id) = store.subscription_id(key).await? else {
        return Ok(None);
    };
    let rec = store.load_subscriptions(id, id).await?.into_iter().next();
    Ok(rec.map(|r| maps.insert(r)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ims_store::{NewPublicIdentity, NewSubscriber};
    use std::time::Duration;
    use zeroize::Zeroizing;

    fn aka(n: usize) -> NewSubscriber {
        NewSubscriber {
            name: format!("u{n}"),
            impi: format!("u{n}@hims.net"),
            credentials: Credentials::Aka {
                k: Zeroizing::new(vec![0x46; 16]),
                opc: Zeroizing::new(vec![0xcd; 16]),
                amf: [0x80, 0],
                sqn: 0,
            },
            public_identities: vec![
                NewPublicIdentity {
                    impu: format!("sip:u{n}@hims.net"),
                    barred: false,
                    irs: 0,
                },
                NewPublicIdentity {
                    impu: format!("tel:+1555000{n}"),
                    barred: false,
                    irs: 0,
                },
            ],
            ifc_xml: String::new(),
            capability_set: None,
            roaming_allowed: vec!["vims.net".into()],
        }
    }

    async fn store(dir: &std::path::Path, subs: usize) -> Store {
        let store = Store::open(&format!("sqlite://{}", dir.join("hss.sqlite").display()))
            .await
            .unwrap();
        let all: Vec<_> = (0..subs).map(aka).collect();
        store.import_subscribers(&all, 100).await.unwrap();
        store
    }

    /// SQNs come from blocks reserved before use: consecutive, the store ahead of them, and
    /// after a restart (a new memory on the same store) above everything handed out before.
    #[tokio::test]
    async fn sqns_come_from_reserved_blocks_and_never_repeat_after_a_restart() {
        let dir = ims_testkit::scratch_dir("hss-subscribers-sqn");
        let store = store(&dir, 1).await;
        let step = 32;
        let subs = Subscribers::start(store.clone(), 8, false);
        let mut seen = Vec::new();
        for _ in 0..20 {
            seen.push(
                subs.take_sqns("u0@hims.net", 1, step)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        // Two at once take two consecutive values.
        let two = subs
            .take_sqns("u0@hims.net", 2, step)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(two, seen[19] + 2 * step);
        assert!(seen.windows(2).all(|w| w[1] == w[0] + step), "{seen:?}");
        assert_eq!(seen[0], step);
        // 22 values in blocks of 8: three reservations; the store holds the third's end.
        let stored = store.subscriber("u0@hims.net").await.unwrap().unwrap().sqn;
        assert_eq!(stored, Some(24 * step));
        drop(subs);
        let again = Subscribers::start(store.clone(), 8, false);
        let next = again
            .take_sqns("u0@hims.net", 1, step)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            next,
            25 * step,
            "after a restart the next block starts past the last"
        );
        assert_eq!(
            again.take_sqns("nobody@hims.net", 1, step).await.unwrap(),
            None
        );
    }

    /// Issue #16: the preload reserves each AKA IMPI's first block, so the first MARs after a
    /// start write nothing; the SQNs still come after everything the store held, and after
    /// another start after everything handed out.
    #[tokio::test]
    async fn the_preload_reserves_first_blocks_so_first_mars_write_nothing() {
        let dir = ims_testkit::scratch_dir("hss-subscribers-ahead");
        let store = store(&dir, 50).await;
        let step = 32;
        store.set_sqn("u7@hims.net", 1000 * step).await.unwrap();
        let subs = Subscribers::start_reserving(store.clone(), 8, true, Some(step));
        let t = std::time::Instant::now();
        while subs.loaded() < 50 {
            assert!(t.elapsed() < Duration::from_secs(10), "preload never ended");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The reservation follows the chunk's load in the writer: wait for its block.
        let stored = || async { store.subscriber("u7@hims.net").await.unwrap().unwrap().sqn };
        while stored().await != Some(1008 * step) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no block reserved ahead"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = subs.write_stats();
        let mut firsts = Vec::new();
        for n in 0..50 {
            let impi = format!("u{n}@hims.net");
            firsts.push(subs.take_sqns(&impi, 1, step).await.unwrap().unwrap());
        }
        assert_eq!(subs.write_stats(), before, "a first MAR wrote");
        assert_eq!(firsts[0], step);
        assert_eq!(firsts[7], 1001 * step, "above what the store held");
        // Seven more from the block, then the next is reserved as before.
        for _ in 0..7 {
            subs.take_sqns("u0@hims.net", 1, step).await.unwrap();
        }
        assert_eq!(
            subs.take_sqns("u0@hims.net", 1, step).await.unwrap(),
            Some(9 * step)
        );
        assert!(subs.write_stats().1 > before.1);
        drop(subs);
        // Another start: past the block handed out from (u0 took 9 steps of the 16 now
        // reserved; its next block starts at 16 and the first SQN is 17).
        let again = Subscribers::start_reserving(store.clone(), 8, true, Some(step));
        let t = std::time::Instant::now();
        loop {
            let s = store.subscriber("u0@hims.net").await.unwrap().unwrap().sqn;
            if s == Some(24 * step) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no block reserved: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            again.take_sqns("u0@hims.net", 1, step).await.unwrap(),
            Some(17 * step)
        );
    }

    /// Concurrent changes are group-committed, written through (the store has them when the
    /// call returns), and a change to what memory already holds writes nothing.
    #[tokio::test]
    async fn changes_are_written_through_in_batches_and_only_when_they_change() {
        let dir = ims_testkit::scratch_dir("hss-subscribers-batch");
        let store = store(&dir, 50).await;
        let subs = Subscribers::start(store.clone(), 32, true);
        let me = ScscfAssignment {
            server_name: "sip:scscf1.hims.net".into(),
            diameter_host: Some("scscf1.hims.net".into()),
        };
        let register = |n: usize| {
            let (subs, me) = (subs.clone(), me.clone());
            async move {
                let impu = format!("sip:u{n}@hims.net");
                subs.set_scscf(&impu, Some(&me)).await.unwrap();
                subs.set_reg_state(&impu, RegState::Registered)
                    .await
                    .unwrap();
            }
        };
        let all: Vec<_> = (0..50).map(|n| tokio::spawn(register(n))).collect();
        for t in all {
            t.await.unwrap();
        }
        let (batches, writes) = subs.write_stats();
        assert_eq!(writes, 100);
        assert!(batches < 100, "{batches} transactions for 100 writes");
        for n in [0, 17, 49] {
            let v = store
                .subscriber(&format!("u{n}@hims.net"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(v.scscf, Some(me.clone()));
            // The whole implicit registration set (sip: and tel:) is registered.
            assert!(
                v.public_identities.iter().all(|p| p.reg_state == 1),
                "{v:?}"
            );
        }
        // A re-registration changes nothing: nothing is written.
        register(3).await;
        assert_eq!(subs.write_stats().1, 100);
        // A MAR's record does not replace the S-CSCF of a registered user.
        let other = ScscfAssignment {
            server_name: "sip:scscf2.hims.net".into(),
            diameter_host: None,
        };
        subs.record_scscf_unless_registered("sip:u3@hims.net", &other)
            .await
            .unwrap();
        assert_eq!(subs.scscf_for("tel:+15550003").await.unwrap(), Some(me));
    }

    /// The last authentication: a success counts only after a challenge, failures are
    /// counted until one, and a forgotten subscriber forgets it.
    #[tokio::test]
    async fn last_authentication_follows_the_cx_outcomes() {
        let dir = ims_testkit::scratch_dir("hss-subscribers-auth");
        let store = store(&dir, 1).await;
        let subs = Subscribers::start(store, 8, false);
        let (impi, s1) = ("u0@hims.net", "sip:scscf1.hims.net");
        let outcome = |subs: &Subscribers| {
            subs.last_authentication(impi)
                .map(|a| (a.outcome, a.failures_in_a_row, a.scscf))
        };
        assert_eq!(outcome(&subs), None);
        // An unchallenged re-registration is no authentication.
        subs.record_authentication(impi, AuthOutcome::Success, s1);
        assert_eq!(outcome(&subs), None);
        for _ in 0..2 {
            subs.record_authentication(impi, AuthOutcome::Challenged, s1);
            subs.record_authentication(impi, AuthOutcome::Failure, s1);
        }
        assert_eq!(
            outcome(&subs),
            Some((AuthOutcome::Failure, 2, s1.to_owned()))
        );
        subs.record_authentication(impi, AuthOutcome::Success, s1);
        assert_eq!(
            outcome(&subs),
            Some((AuthOutcome::Failure, 2, s1.to_owned())),
            "no success without a challenge before it"
        );
        subs.record_authentication(impi, AuthOutcome::Resync, "sip:scscf2.hims.net");
        subs.record_authentication(impi, AuthOutcome::Success, "sip:scscf2.hims.net");
        assert_eq!(
            outcome(&subs),
            Some((AuthOutcome::Success, 0, "sip:scscf2.hims.net".to_owned()))
        );
        subs.forget(impi).unwrap();
        assert_eq!(outcome(&subs), None);
    }

    /// Reads answer what the store holds; a deleted subscriber is forgotten and one added
    /// later is found (preloaded).
    #[tokio::test]
    async fn reads_forget_and_preload() {
        let dir = ims_testkit::scratch_dir("hss-subscribers-read");
        let store = store(&dir, 2).await;
        let subs = Subscribers::start(store.clone(), 32, true);
        assert!(
            subs.impi_has_impu("u1@hims.net", "tel:+15550001")
                .await
                .unwrap()
        );
        assert!(
            !subs
                .impi_has_impu("u1@hims.net", "sip:u0@hims.net")
                .await
                .unwrap()
        );
        assert!(
            subs.roaming_allowed("sip:u1@hims.net", "VIMS.net", "hims.net")
                .await
                .unwrap()
        );
        assert!(
            !subs
                .roaming_allowed("sip:u1@hims.net", "other.net", "hims.net")
                .await
                .unwrap()
        );
        assert_eq!(
            subs.impi_of("tel:+15550001").await.unwrap().as_deref(),
            Some("u1@hims.net")
        );
        assert_eq!(
            subs.first_impu("u1@hims.net").await.unwrap().as_deref(),
            Some("sip:u1@hims.net")
        );
        let p = subs.profile("u1@hims.net").await.unwrap().unwrap();
        assert_eq!(p.profiles.len(), 1);
        assert_eq!(p.profiles[0].1.len(), 2);
        assert!(
            subs.public_identity("sip:nobody@hims.net")
                .await
                .unwrap()
                .is_none()
        );

        store.delete_subscriber("u1@hims.net").await.unwrap();
        subs.forget("u1@hims.net").unwrap();
        assert!(subs.credentials("u1@hims.net").await.unwrap().is_none());
        assert!(
            subs.public_identity("tel:+15550001")
                .await
                .unwrap()
                .is_none()
        );

        store.add_subscriber(&aka(7)).await.unwrap();
        subs.added();
        // Preloaded in the background: wait for it, then it needs no load.
        let t = std::time::Instant::now();
        while subs.loaded() < 2 {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(5),
                "not preloaded"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(subs.credentials("u7@hims.net").await.unwrap().is_some());
    }
}
