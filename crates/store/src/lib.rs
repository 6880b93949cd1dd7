//! Persistence for the IMS core, on sqlx: SQLite embedded by default (a file, created and
//! migrated at start), PostgreSQL when the URL says so (`postgres://...`) so that several
//! nodes share one store. The same queries serve both through sqlx's `Any` driver (`$n`
//! placeholders, BIGINT integers, `RETURNING`); each backend has its own migrations.
//!
//! Today it holds the HSS's subscriber data (see `migrations/*/0001_subscribers.sql`):
//! subscriptions, private identities with their AKA or digest credentials and SQN, service
//! profiles, public identities and implicit registration sets, roaming permissions, and the
//! S-CSCF assignment; and the S-CSCF's registrations ([`RegistrationRecord`], see
//! `registrations.rs` and `migrations/*/0002_registrations.sql`); and the P-CSCF's
//! registrations, one per UE flow ([`PcscfRegistrationRecord`], see `pcscf.rs` and
//! `migrations/*/0003_pcscf_registrations.sql`). A network function that
//! answers from memory loads whole subscriptions and writes its changes in batches through
//! `snapshot.rs` ([`SubscriptionRecord`], [`Write`]).
//!
//! Every change is one transaction, so nothing is ever half-written; the SQN is advanced by a
//! single `UPDATE ... RETURNING`, so no two callers, on one node or several, ever receive the
//! same sequence number. Secrets (K, OPc, HA1) are zeroized on drop and never printed.
//!
//! # Checkpoints: in the background, and rarely in a commit (SQLite)
//! SQLite's WAL is copied back into the database file by a checkpoint, with two fsyncs. By
//! default the commit that takes the WAL past 1,000 pages (4 MiB) runs it, and a daemon's
//! answers wait for that commit (below). In the 100,000-UE soak the S-CSCF's WAL grew by
//! 17 MB a second, so it checkpointed four times a second inside its commits; the disk,
//! written at 40 MB/s by the three stores, sometimes took 100-200 ms over the fsyncs, and the
//! P-CSCF's REGISTERs in flight then passed its limit (503s). A file store therefore
//! checkpoints in a task of its own every [`CHECKPOINT_EVERY`] (PASSIVE: it blocks no reader
//! or writer), and leaves SQLite's automatic checkpoint in the commit only past
//! [`WAL_LIMIT_PAGES`]: a commit then copies only the few pages the task has not yet, and,
//! as the daemons' single writer is waiting on that commit and writes nothing meanwhile, the
//! checkpoint completes and the next write starts the WAL again from its beginning. The
//! WAL thus stays within about [`WAL_LIMIT_PAGES`]. (Background checkpoints alone, with the
//! automatic one off, were tried: the writer appends while a checkpoint copies, so the
//! copy is never complete, the WAL never restarts, and it grew to 18 GB in a soak.) The
//! task ends with the last clone of the [`Store`].
//!
//! The daemons wait for their batched writes before they answer (a 200 OK goes once its
//! registration is on disk), so a slow write is a slow answer: a batch that takes longer than
//! [`SLOW_WRITE`] (a checkpoint of SQLite's WAL inside the commit, a disk busy with something
//! else, a PostgreSQL far away) is logged as a warning naming the kind of write, how many
//! changes it held and how long it took, at most once a second with the number of others
//! left unsaid.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};
use zeroize::Zeroizing;

mod pcscf;
mod registrations;
mod snapshot;
pub use pcscf::{
    FlowKey, FlowTransport, PCSCF_ROWS, PcscfContactRecord, PcscfRegistrationRecord, PcscfWrite,
};
pub use registrations::{BindingRecord, RegistrationRecord, RegistrationWrite};
pub use snapshot::{IdentityKey, PrivateIdentityRecord, SubscriptionRecord, Write};

/// A batched write slower than this is logged (see the module docs).
pub const SLOW_WRITE: Duration = Duration::from_millis(100);

/// At most one line a second: when the last went, and how many were left unsaid since.
struct OncePerSecond {
    /// Milliseconds since [`slow_epoch`] plus 1,000, so that the first line always goes.
    logged_at: AtomicU64,
    unsaid: AtomicU64,
}

impl OncePerSecond {
    const fn new() -> Self {
        Self {
            logged_at: AtomicU64::new(0),
            unsaid: AtomicU64::new(0),
        }
    }

    /// Whether a line may go at `now_ms` (ms since the epoch, plus 1,000), and then how many
    /// were left unsaid before it; `None` counts this one as unsaid.
    fn admit(&self, now_ms: u64) -> Option<u64> {
        let last = self.logged_at.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < 1000
            || self
                .logged_at
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.unsaid.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.unsaid.swap(0, Ordering::Relaxed))
    }
}

static SLOW_WRITES: OncePerSecond = OncePerSecond::new();

fn slow_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Logs a batched write of `changes` changes that started at `started`, if it was slow.
fn note_write(what: &'static str, changes: usize, started: Instant) {
    let took = started.elapsed();
    if took < SLOW_WRITE {
        return;
    }
    let now_ms = slow_epoch().elapsed().as_millis() as u64 + 1000;
    if let Some(unsaid) = SLOW_WRITES.admit(now_ms) {
        tracing::warn!(
            what,
            changes,
            ms = took.as_millis() as u64,
            others_in_the_last_second = unsaid,
            "slow store write: the answers waiting for it were late by as much"
        );
    }
}

/// 2^48: SQN is a 48-bit counter.
pub const SQN_MODULUS: u64 = 1 << 48;

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL `{0}` (sqlite:// or postgres://)")]
    BadUrl(String),
    #[error("{what} `{key}` exists already")]
    Duplicate { what: &'static str, key: String },
    #[error("{what} `{key}` not found")]
    NotFound { what: &'static str, key: String },
    #[error("invalid {field}: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error during {op}: {source}")]
    Db {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

/// How a private identity authenticates.
#[derive(Clone)]
pub enum Credentials {
    /// Digest-AKAv1-MD5: K, OPc, AMF and the HSS's current SQN.
    Aka {
        k: Zeroizing<Vec<u8>>,
        opc: Zeroizing<Vec<u8>>,
        amf: [u8; 2],
        sqn: u64,
    },
    /// SIP Digest MD5: the realm and HA1 = MD5(user:realm:password), lowercase hex.
    Digest {
        realm: String,
        ha1: Zeroizing<String>,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Aka { amf, sqn, .. } => f
                .debug_struct("Aka")
                .field("amf", amf)
                .field("sqn", sqn)
                .finish_non_exhaustive(),
            Credentials::Digest { realm, .. } => f
                .debug_struct("Digest")
                .field("realm", realm)
                .finish_non_exhaustive(),
        }
    }
}

/// One public identity to provision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPublicIdentity {
    pub impu: String,
    pub barred: bool,
    /// Implicit registration set number; identities with the same number register together.
    pub irs: i64,
}

/// A whole subscriber: one IMPI and its public identities, in one service profile.
#[derive(Debug, Clone)]
pub struct NewSubscriber {
    /// The operator's handle for the subscription (e.g. the IMSI); unique.
    pub name: String,
    pub impi: String,
    pub credentials: Credentials,
    pub public_identities: Vec<NewPublicIdentity>,
    /// InitialFilterCriteria XML elements for the service profile (may be empty).
    pub ifc_xml: String,
    pub capability_set: Option<String>,
    /// Visited networks this subscriber may register from (besides the home network).
    pub roaming_allowed: Vec<String>,
}

/// A public identity as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicIdentity {
    pub impu: String,
    pub subscription_id: i64,
    pub irs: i64,
    pub barred: bool,
    pub reg_state: i64,
}

/// The S-CSCF serving a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScscfAssignment {
    pub server_name: String,
    pub diameter_host: Option<String>,
}

/// A named set of S-CSCF capabilities (TS 29.228 Server-Capabilities).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CapabilitySet {
    pub name: String,
    pub mandatory: Vec<u32>,
    pub optional: Vec<u32>,
    /// Preferred S-CSCFs (SIP URIs), sent as Server-Name inside Server-Capabilities.
    pub server_names: Vec<String>,
}

/// Registration state of a public identity (TS 29.228).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegState {
    NotRegistered = 0,
    Registered = 1,
    Unregistered = 2,
}

/// What the HSS needs to build the User-Data (IMSSubscription XML) of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionProfile {
    /// The private identity the request named.
    pub impi: String,
    /// Service profiles: their iFC XML and public identities (barring, implicit set).
    pub profiles: Vec<(String, Vec<PublicIdentity>)>,
}

fn join<T: ToString>(v: &[T]) -> String {
    v.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

fn split_u32(s: &str) -> Vec<u32> {
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

fn split_str(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Credentials from the columns `auth_scheme, k, opc, amf, sqn, digest_realm, digest_ha1` of
/// `row`, starting at column `at`.
fn credentials_row(row: &sqlx::any::AnyRow, at: usize) -> Result<Credentials, StoreError> {
    let get = |e| db("read credentials")(e);
    let scheme: String = row.try_get(at).map_err(get)?;
    Ok(if scheme == "aka" {
        let amf: Vec<u8> = row.try_get(at + 3).map_err(get)?;
        let sqn: i64 = row.try_get(at + 4).map_err(get)?;
        Credentials::Aka {
            k: Zeroizing::new(row.try_get(at + 1).map_err(get)?),
            opc: Zeroizing::new(row.try_get(at + 2).map_err(get)?),
            amf: [
                amf.first().copied().unwrap_or(0),
                amf.get(1).copied().unwrap_or(0),
            ],
            sqn: sqn as u64,
        }
    } else {
        Credentials::Digest {
            realm: row.try_get(at + 5).map_err(get)?,
            ha1: Zeroizing::new(row.try_get(at + 6).map_err(get)?),
        }
    })
}

/// A capability set from a row of (name, mandatory, optional, server_names).
fn capability_row(row: &sqlx::any::AnyRow) -> Result<CapabilitySet, StoreError> {
    let get = |e| db("read capabilities")(e);
    Ok(CapabilitySet {
        name: row.try_get(0).map_err(get)?,
        mandatory: split_u32(&row.try_get::<String, _>(1).map_err(get)?),
        optional: split_u32(&row.try_get::<String, _>(2).map_err(get)?),
        server_names: split_str(&row.try_get::<String, _>(3).map_err(get)?),
    })
}

/// A subscriber as the admin API shows it: no secret, ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberView {
    pub name: String,
    pub impi: String,
    /// `aka` or `digest`.
    pub auth_scheme: String,
    /// The current SQN (AKA only).
    pub sqn: Option<u64>,
    pub public_identities: Vec<PublicIdentity>,
    pub capability_set: Option<String>,
    pub scscf: Option<ScscfAssignment>,
}

/// A registered public identity as the HSS knows it: who, and at which S-CSCF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredIdentity {
    pub impu: String,
    /// The first (in order) private identity allowed to use it.
    pub impi: Option<String>,
    pub scscf: Option<ScscfAssignment>,
}

/// How often a file SQLite store checkpoints its WAL in the background (module docs).
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// The WAL's size, in pages, past which the commit that reaches it checkpoints (SQLite's
/// `wal_autocheckpoint`; module docs): 64 MiB of 4 KiB pages, some 4 s of the S-CSCF's
/// writes in the 100,000-UE soak.
pub const WAL_LIMIT_PAGES: u32 = 16_384;

/// The store: a connection pool and the backend it talks to.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Stops the checkpoint task when the last clone is dropped (file SQLite only).
    _checkpoints: Option<std::sync::Arc<tokio::sync::oneshot::Sender<()>>>,
}

impl Store {
    /// Connects to `url` (`sqlite://path` creates the file; `sqlite::memory:` for tests;
    /// `postgres://...`), and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with_wal_limit(url, WAL_LIMIT_PAGES).await
    }

    /// [`Store::open`] with another limit on a file SQLite store's WAL than
    /// [`WAL_LIMIT_PAGES`], in pages (the module docs); 0 turns checkpoints in a commit off,
    /// and with them the limit.
    pub async fn open_with_wal_limit(url: &str, wal_limit_pages: u32) -> Result<Self, StoreError> {
        install_default_drivers();
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let mut u = format!("sqlite:{rest}");
            if !rest.contains(":memory:") && !rest.contains("mode=") {
                u.push_str(if rest.contains('?') {
                    "&mode=rwc"
                } else {
                    "?mode=rwc"
                });
            }
            (Backend::Sqlite, u)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(StoreError::BadUrl(url.to_owned()));
        };
        let mut opts = AnyPoolOptions::new();
        let file = backend == Backend::Sqlite && !url.contains(":memory:");
        if backend == Backend::Sqlite {
            if url.contains(":memory:") {
                // One connection, or each would see its own empty in-memory database.
                opts = opts.max_connections(1);
            }
            // WAL (sqlx's default) with synchronous=NORMAL: a committed transaction survives
            // the process being killed (kill -9, a crash), which is what SQN safety needs;
            // only an OS crash or power loss may lose the last commits. FULL would fsync
            // every MAR's SQN update and cap the HSS at a few hundred MAR/s.
            opts = opts.after_connect(move |conn, _meta| {
                Box::pin(async move {
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 5000")
                        .execute(&mut *conn)
                        .await?;
                    if file {
                        // The task checkpoints; a commit only past the limit (module docs).
                        sqlx::query(&format!("PRAGMA wal_autocheckpoint = {wal_limit_pages}"))
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            });
        }
        let pool = opts.connect(&url).await.map_err(db("connect"))?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&pool).await?,
        }
        tracing::info!(?backend, "store opened and migrated");
        let checkpoints = file.then(|| {
            let (stop, stopped) = tokio::sync::oneshot::channel();
            tokio::spawn(checkpoints(pool.clone(), stopped));
            std::sync::Arc::new(stop)
        });
        Ok(Self {
            pool,
            backend,
            _checkpoints: checkpoints,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Provisions a subscriber in one transaction: all of it, or nothing.
    pub async fn add_subscriber(&self, s: &NewSubscriber) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        Self::insert_subscriber(&mut tx, s).await?;
        tx.commit().await.map_err(db("commit"))?;
        tracing::info!(impi = %s.impi, impus = s.public_identities.len(), "subscriber added");
        Ok(())
    }

    /// Provisions many subscribers, `batch` per transaction (bulk import). Stops at the first
    /// bad or duplicate one, naming it; the batches before it stay committed.
    ///
    /// Each batch is a handful of multi-row INSERTs (one per table) instead of six round trips
    /// per subscriber; a batch that hits a duplicate is redone row by row, in a new
    /// transaction, so that the error names the culprit.
    pub async fn import_subscribers(
        &self,
        subs: &[NewSubscriber],
        batch: usize,
    ) -> Result<usize, StoreError> {
        let mut done = 0;
        for chunk in subs.chunks(batch.max(1)) {
            for s in chunk {
                Self::validate(s)?;
            }
            let mut tx = self.pool.begin().await.map_err(db("begin"))?;
            // Statements of at most 100 rows: sqlx-sqlite looks every parameter up by name,
            // which costs O(parameters^2) per statement (9,000 parameters took 0.6 s).
            let mut res = Ok(());
            for rows in chunk.chunks(100) {
                res = Self::insert_batch(&mut tx, rows).await;
                if res.is_err() {
                    break;
                }
            }
            match res {
                Ok(()) => tx.commit().await.map_err(db("commit"))?,
                Err(StoreError::Duplicate { .. }) => {
                    tx.rollback().await.map_err(db("rollback"))?;
                    let mut tx = self.pool.begin().await.map_err(db("begin"))?;
                    for s in chunk {
                        Self::insert_subscriber(&mut tx, s).await?;
                    }
                    tx.commit().await.map_err(db("commit"))?;
                }
                Err(e) => return Err(e),
            }
            done += chunk.len();
        }
        tracing::info!(count = done, "subscribers imported");
        Ok(done)
    }

    fn validate(s: &NewSubscriber) -> Result<(), StoreError> {
        if s.public_identities.is_empty() {
            return Err(StoreError::Invalid {
                field: "public_identities",
                why: format!("subscriber {} needs at least one public identity", s.impi),
            });
        }
        if let Credentials::Aka { k, opc, sqn, .. } = &s.credentials {
            if k.len() != 16 || opc.len() != 16 {
                return Err(StoreError::Invalid {
                    field: "k/opc",
                    why: "K and OPc are 16 bytes each".into(),
                });
            }
            if *sqn >= SQN_MODULUS {
                return Err(StoreError::Invalid {
                    field: "sqn",
                    why: "SQN is a 48-bit value".into(),
                });
            }
        }
        Ok(())
    }

    /// `VALUES ($1, $2), ($3, $4), ...` for `rows` rows of `cols` columns.
    fn values(rows: usize, cols: usize) -> String {
        let mut v = String::with_capacity(rows * cols * 5);
        for r in 0..rows {
            v.push_str(if r == 0 { "(" } else { ", (" });
            for c in 0..cols {
                if c > 0 {
                    v.push_str(", ");
                }
                v.push('$');
                v.push_str(&(r * cols + c + 1).to_string());
            }
            v.push(')');
        }
        v
    }

    async fn insert_batch(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        chunk: &[NewSubscriber],
    ) -> Result<(), StoreError> {
        let dup = |e: sqlx::Error| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Duplicate {
                what: "subscriber",
                key: "(in this batch)".into(),
            },
            _ => StoreError::Db {
                op: "import subscribers",
                source: e,
            },
        };
        // Subscriptions: map name -> id (RETURNING order is not guaranteed on SQLite).
        let sql = format!(
            "INSERT INTO subscription (name, capability_set) VALUES {} RETURNING id, name",
            Self::values(chunk.len(), 2)
        );
        let mut q = sqlx::query(&sql);
        for s in chunk {
            q = q.bind(&s.name).bind(s.capability_set.as_deref());
        }
        let rows = q.fetch_all(&mut **tx).await.map_err(dup)?;
        let mut sub_ids = std::collections::HashMap::with_capacity(chunk.len());
        for r in rows {
            let id: i64 = r.try_get(0).map_err(db("import subscribers"))?;
            let name: String = r.try_get(1).map_err(db("import subscribers"))?;
            sub_ids.insert(name, id);
        }
        let id_of = |s: &NewSubscriber| {
            sub_ids
                .get(&s.name)
                .copied()
                .ok_or_else(|| StoreError::Invalid {
                    field: "name",
                    why: format!("subscription name `{}` appears twice in the import", s.name),
                })
        };
        let sql = format!(
            "INSERT INTO private_identity (impi, subscription_id, auth_scheme, k, opc, amf, sqn, digest_realm, digest_ha1) VALUES {}",
            Self::values(chunk.len(), 9)
        );
        let mut q = sqlx::query(&sql);
        for s in chunk {
            q = q.bind(&s.impi).bind(id_of(s)?);
            q = match &s.credentials {
                Credentials::Aka { k, opc, amf, sqn } => q
                    .bind("aka")
                    .bind(k.to_vec())
                    .bind(opc.to_vec())
                    .bind(amf.to_vec())
                    .bind(*sqn as i64)
                    .bind(None::<String>)
                    .bind(None::<String>),
                Credentials::Digest { realm, ha1 } => q
                    .bind("digest")
                    .bind(None::<Vec<u8>>)
                    .bind(None::<Vec<u8>>)
                    .bind(None::<Vec<u8>>)
                    .bind(0i64)
                    .bind(realm.as_str())
                    .bind(ha1.as_str()),
            };
        }
        q.execute(&mut **tx).await.map_err(dup)?;
        let sql = format!(
            "INSERT INTO service_profile (subscription_id, ifc_xml) VALUES {} RETURNING id, subscription_id",
            Self::values(chunk.len(), 2)
        );
        let mut q = sqlx::query(&sql);
        for s in chunk {
            q = q.bind(id_of(s)?).bind(&s.ifc_xml);
        }
        let mut profile_of = std::collections::HashMap::with_capacity(chunk.len());
        for r in q.fetch_all(&mut **tx).await.map_err(dup)? {
            let id: i64 = r.try_get(0).map_err(db("import subscribers"))?;
            let sub: i64 = r.try_get(1).map_err(db("import subscribers"))?;
            profile_of.insert(sub, id);
        }
        let mut ids: Vec<(&NewSubscriber, &NewPublicIdentity)> = Vec::new();
        for s in chunk {
            for p in &s.public_identities {
                ids.push((s, p));
            }
        }
        for part in ids.chunks(2000) {
            let sql = format!(
                "INSERT INTO public_identity (impu, subscription_id, service_profile_id, irs, barred) VALUES {}",
                Self::values(part.len(), 5)
            );
            let mut q = sqlx::query(&sql);
            for (s, p) in part {
                let sub = id_of(s)?;
                let profile = profile_of.get(&sub).copied().unwrap_or_default();
                q = q
                    .bind(&p.impu)
                    .bind(sub)
                    .bind(profile)
                    .bind(p.irs)
                    .bind(i64::from(p.barred));
            }
            q.execute(&mut **tx).await.map_err(dup)?;
            let sql = format!(
                "INSERT INTO impi_impu (impi, impu) VALUES {}",
                Self::values(part.len(), 2)
            );
            let mut q = sqlx::query(&sql);
            for (s, p) in part {
                q = q.bind(&s.impi).bind(&p.impu);
            }
            q.execute(&mut **tx).await.map_err(dup)?;
        }
        let roaming: Vec<(i64, &String)> = chunk
            .iter()
            .flat_map(|s| s.roaming_allowed.iter().map(move |v| (s, v)))
            .map(|(s, v)| Ok::<_, StoreError>((id_of(s)?, v)))
            .collect::<Result<_, _>>()?;
        for part in roaming.chunks(2000) {
            let sql = format!(
                "INSERT INTO roaming_allowed (subscription_id, visited_network) VALUES {}",
                Self::values(part.len(), 2)
            );
            let mut q = sqlx::query(&sql);
            for (id, v) in part {
                q = q.bind(*id).bind(v.as_str());
            }
            q.execute(&mut **tx).await.map_err(dup)?;
        }
        Ok(())
    }

    async fn insert_subscriber(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        s: &NewSubscriber,
    ) -> Result<(), StoreError> {
        if s.public_identities.is_empty() {
            return Err(StoreError::Invalid {
                field: "public_identities",
                why: format!("subscriber {} needs at least one public identity", s.impi),
            });
        }
        let dup = |what: &'static str, key: &str| {
            let key = key.to_owned();
            move |e: sqlx::Error| match &e {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    StoreError::Duplicate { what, key }
                }
                _ => StoreError::Db {
                    op: "add subscriber",
                    source: e,
                },
            }
        };
        let sub_id: i64 = sqlx::query(
            "INSERT INTO subscription (name, capability_set) VALUES ($1, $2) RETURNING id",
        )
        .bind(&s.name)
        .bind(s.capability_set.as_deref())
        .fetch_one(&mut **tx)
        .await
        .map_err(dup("subscription", &s.name))?
        .try_get(0)
        .map_err(db("add subscriber"))?;
        let q = sqlx::query(
            "INSERT INTO private_identity (impi, subscription_id, auth_scheme, k, opc, amf, sqn, digest_realm, digest_ha1) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&s.impi)
        .bind(sub_id);
        let q = match &s.credentials {
            Credentials::Aka { k, opc, amf, sqn } => {
                if k.len() != 16 || opc.len() != 16 {
                    return Err(StoreError::Invalid {
                        field: "k/opc",
                        why: "K and OPc are 16 bytes each".into(),
                    });
                }
                if *sqn >= SQN_MODULUS {
                    return Err(StoreError::Invalid {
                        field: "sqn",
                        why: "SQN is a 48-bit value".into(),
                    });
                }
                q.bind("aka")
                    .bind(k.to_vec())
                    .bind(opc.to_vec())
                    .bind(amf.to_vec())
                    .bind(*sqn as i64)
                    .bind(None::<String>)
                    .bind(None::<String>)
            }
            Credentials::Digest { realm, ha1 } => q
                .bind("digest")
                .bind(None::<Vec<u8>>)
                .bind(None::<Vec<u8>>)
                .bind(None::<Vec<u8>>)
                .bind(0i64)
                .bind(realm.as_str())
                .bind(ha1.as_str()),
        };
        q.execute(&mut **tx)
            .await
            .map_err(dup("private identity", &s.impi))?;
        let profile_id: i64 = sqlx::query(
            "INSERT INTO service_profile (subscription_id, ifc_xml) VALUES ($1, $2) RETURNING id",
        )
        .bind(sub_id)
        .bind(&s.ifc_xml)
        .fetch_one(&mut **tx)
        .await
        .map_err(db("add subscriber"))?
        .try_get(0)
        .map_err(db("add subscriber"))?;
        for p in &s.public_identities {
            sqlx::query(
                "INSERT INTO public_identity (impu, subscription_id, service_profile_id, irs, barred) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&p.impu)
            .bind(sub_id)
            .bind(profile_id)
            .bind(p.irs)
            .bind(i64::from(p.barred))
            .execute(&mut **tx)
            .await
            .map_err(dup("public identity", &p.impu))?;
            sqlx::query("INSERT INTO impi_impu (impi, impu) VALUES ($1, $2)")
                .bind(&s.impi)
                .bind(&p.impu)
                .execute(&mut **tx)
                .await
                .map_err(db("add subscriber"))?;
        }
        for v in &s.roaming_allowed {
            sqlx::query(
                "INSERT INTO roaming_allowed (subscription_id, visited_network) VALUES ($1, $2)",
            )
            .bind(sub_id)
            .bind(v)
            .execute(&mut **tx)
            .await
            .map_err(dup("roaming entry", v))?;
        }
        Ok(())
    }

    /// Removes the subscription that owns `impi`, with everything in it.
    pub async fn delete_subscriber(&self, impi: &str) -> Result<(), StoreError> {
        let res = sqlx::query(
            "DELETE FROM subscription WHERE id = (SELECT subscription_id FROM private_identity WHERE impi = $1)",
        )
        .bind(impi)
        .execute(&self.pool)
        .await
        .map_err(db("delete subscriber"))?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "private identity",
                key: impi.to_owned(),
            });
        }
        Ok(())
    }

    /// The credentials of `impi`, or `None` for an unknown user.
    pub async fn credentials(&self, impi: &str) -> Result<Option<Credentials>, StoreError> {
        let row = sqlx::query(
            "SELECT auth_scheme, k, opc, amf, sqn, digest_realm, digest_ha1 FROM private_identity WHERE impi = $1",
        )
        .bind(impi)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read credentials"))?;
        row.map(|r| credentials_row(&r, 0)).transpose()
    }

    /// Advances the SQN of `impi` by `delta` (mod 2^48) atomically and returns the new value.
    /// A caller handing out n vectors asks for n steps at once and owns every value between
    /// the old and the new SQN: no other caller can receive any of them.
    pub async fn advance_sqn(&self, impi: &str, delta: u64) -> Result<u64, StoreError> {
        let delta = (delta % SQN_MODULUS) as i64;
        let new: Option<i64> = sqlx::query_scalar(
            "UPDATE private_identity SET sqn = (sqn + $2) % 281474976710656 WHERE impi = $1 AND auth_scheme = 'aka' RETURNING sqn",
        )
        .bind(impi)
        .bind(delta)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("advance SQN"))?;
        new.map(|n| n as u64).ok_or_else(|| StoreError::NotFound {
            what: "AKA private identity",
            key: impi.to_owned(),
        })
    }

    /// Advances by `delta` (mod 2^48) the SQN of every AKA private identity of the
    /// subscriptions `first_id..=last_id`, in one statement, and returns each IMPI with its
    /// new SQN: an HSS reserving SQN blocks for subscribers it preloads, so that their first
    /// MARs need no write (each such write is a random page of a large table).
    pub async fn reserve_sqns(
        &self,
        first_id: i64,
        last_id: i64,
        delta: u64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let delta = (delta % SQN_MODULUS) as i64;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "UPDATE private_identity SET sqn = (sqn + $3) % 281474976710656 \
             WHERE subscription_id BETWEEN $1 AND $2 AND auth_scheme = 'aka' RETURNING impi, sqn",
        )
        .bind(first_id)
        .bind(last_id)
        .bind(delta)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reserve SQNs"))?;
        Ok(rows.into_iter().map(|(i, n)| (i, n as u64)).collect())
    }

    /// Sets the SQN of `impi` (resynchronisation), returning it.
    pub async fn set_sqn(&self, impi: &str, sqn: u64) -> Result<u64, StoreError> {
        if sqn >= SQN_MODULUS {
            return Err(StoreError::Invalid {
                field: "sqn",
                why: "SQN is a 48-bit value".into(),
            });
        }
        let res = sqlx::query(
            "UPDATE private_identity SET sqn = $2 WHERE impi = $1 AND auth_scheme = 'aka'",
        )
        .bind(impi)
        .bind(sqn as i64)
        .execute(&self.pool)
        .await
        .map_err(db("set SQN"))?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "AKA private identity",
                key: impi.to_owned(),
            });
        }
        Ok(sqn)
    }

    /// A public identity, or `None`.
    pub async fn public_identity(&self, impu: &str) -> Result<Option<PublicIdentity>, StoreError> {
        let row = sqlx::query(
            "SELECT impu, subscription_id, irs, barred, reg_state FROM public_identity WHERE impu = $1",
        )
        .bind(impu)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read public identity"))?;
        let Some(row) = row else { return Ok(None) };
        let get = |e| db("read public identity")(e);
        Ok(Some(PublicIdentity {
            impu: row.try_get(0).map_err(get)?,
            subscription_id: row.try_get(1).map_err(get)?,
            irs: row.try_get(2).map_err(get)?,
            barred: row.try_get::<i64, _>(3).map_err(get)? != 0,
            reg_state: row.try_get(4).map_err(get)?,
        }))
    }

    /// Whether `impi` may use `impu` (TS 29.228: otherwise DIAMETER_ERROR_IDENTITIES_DONT_MATCH).
    pub async fn impi_has_impu(&self, impi: &str, impu: &str) -> Result<bool, StoreError> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM impi_impu WHERE impi = $1 AND impu = $2")
                .bind(impi)
                .bind(impu)
                .fetch_one(&self.pool)
                .await
                .map_err(db("check identities"))?;
        Ok(n > 0)
    }

    /// The S-CSCF serving the subscription that owns `impu`, if one is assigned.
    pub async fn scscf_for(&self, impu: &str) -> Result<Option<ScscfAssignment>, StoreError> {
        let row = sqlx::query(
            "SELECT s.scscf_name, s.scscf_host FROM subscription s JOIN public_identity p ON p.subscription_id = s.id WHERE p.impu = $1",
        )
        .bind(impu)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read S-CSCF"))?;
        let Some(row) = row else { return Ok(None) };
        let name: Option<String> = row.try_get(0).map_err(db("read S-CSCF"))?;
        let host: Option<String> = row.try_get(1).map_err(db("read S-CSCF"))?;
        Ok(name.map(|server_name| ScscfAssignment {
            server_name,
            diameter_host: host,
        }))
    }

    /// Assigns (`Some`) or clears (`None`) the S-CSCF of the subscription owning `impu`.
    pub async fn set_scscf(
        &self,
        impu: &str,
        a: Option<&ScscfAssignment>,
    ) -> Result<(), StoreError> {
        let res = sqlx::query(
            "UPDATE subscription SET scscf_name = $2, scscf_host = $3 WHERE id = (SELECT subscription_id FROM public_identity WHERE impu = $1)",
        )
        .bind(impu)
        .bind(a.map(|a| a.server_name.as_str()))
        .bind(a.and_then(|a| a.diameter_host.as_deref()))
        .execute(&self.pool)
        .await
        .map_err(db("set S-CSCF"))?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "public identity",
                key: impu.to_owned(),
            });
        }
        Ok(())
    }

    /// Records `a` as the subscription's S-CSCF unless one of its identities is registered
    /// or it is recorded already (MAR: TS 29.228 §6.3). One statement; writes only on change.
    pub async fn record_scscf_unless_registered(
        &self,
        impu: &str,
        a: &ScscfAssignment,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE subscription SET scscf_name = $2, scscf_host = $3 \
             WHERE id = (SELECT subscription_id FROM public_identity WHERE impu = $1) \
             AND NOT EXISTS (SELECT 1 FROM public_identity p WHERE p.subscription_id = subscription.id AND p.reg_state = 1) \
             AND (scscf_name IS NULL OR scscf_name <> $2 OR scscf_host IS NULL OR scscf_host <> $3)",
        )
        .bind(impu)
        .bind(a.server_name.as_str())
        .bind(a.diameter_host.as_deref())
        .execute(&self.pool)
        .await
        .map_err(db("record S-CSCF"))?;
        Ok(())
    }

    /// Whether the subscription owning `impu` may register from `visited_network`
    /// (TS 29.228 UAR: otherwise DIAMETER_ERROR_ROAMING_NOT_ALLOWED). `home_network` is always
    /// allowed.
    pub async fn roaming_allowed(
        &self,
        impu: &str,
        visited_network: &str,
        home_network: &str,
    ) -> Result<bool, StoreError> {
        if visited_network.eq_ignore_ascii_case(home_network) {
            return Ok(true);
        }
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM roaming_allowed r JOIN public_identity p ON p.subscription_id = r.subscription_id WHERE p.impu = $1 AND LOWER(r.visited_network) = LOWER($2)",
        )
        .bind(impu)
        .bind(visited_network)
        .fetch_one(&self.pool)
        .await
        .map_err(db("check roaming"))?;
        Ok(n > 0)
    }

    /// Sets the registration state of every identity in the implicit registration set of
    /// `impu` (they register and deregister together), returning the identities changed.
    pub async fn set_reg_state(
        &self,
        impu: &str,
        state: RegState,
    ) -> Result<Vec<String>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(
            "UPDATE public_identity SET reg_state = $2 WHERE (subscription_id, irs) = \
             (SELECT subscription_id, irs FROM public_identity WHERE impu = $1) RETURNING impu",
        )
        .bind(impu)
        .bind(state as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(db("set registration state"))?;
        if rows.is_empty() {
            return Err(StoreError::NotFound {
                what: "public identity",
                key: impu.to_owned(),
            });
        }
        Ok(rows)
    }

    /// Creates or replaces a capability set.
    pub async fn put_capability_set(&self, c: &CapabilitySet) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO capability_set (name, mandatory, optional, server_names) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET mandatory = excluded.mandatory, optional = excluded.optional, server_names = excluded.server_names",
        )
        .bind(&c.name)
        .bind(join(&c.mandatory))
        .bind(join(&c.optional))
        .bind(join(&c.server_names))
        .execute(&self.pool)
        .await
        .map_err(db("put capability set"))?;
        Ok(())
    }

    /// The capability set of the subscription owning `impu` (`None` when it has none).
    pub async fn capabilities_for(&self, impu: &str) -> Result<Option<CapabilitySet>, StoreError> {
        let row = sqlx::query(
            "SELECT c.name, c.mandatory, c.optional, c.server_names FROM capability_set c \
             JOIN subscription s ON s.capability_set = c.name JOIN public_identity p ON p.subscription_id = s.id WHERE p.impu = $1",
        )
        .bind(impu)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read capabilities"))?;
        row.map(|r| capability_row(&r)).transpose()
    }

    /// The service profiles and public identities of the subscription owning `impi`, for the
    /// User-Data of an SAA (`None` for an unknown IMPI).
    pub async fn profile(&self, impi: &str) -> Result<Option<SubscriptionProfile>, StoreError> {
        let rows = sqlx::query(
            "SELECT sp.id, sp.ifc_xml, p.impu, p.subscription_id, p.irs, p.barred, p.reg_state \
             FROM private_identity i JOIN service_profile sp ON sp.subscription_id = i.subscription_id \
             JOIN public_identity p ON p.subscription_id = sp.subscription_id AND p.service_profile_id = sp.id \
             WHERE i.impi = $1 ORDER BY sp.id, p.impu",
        )
        .bind(impi)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read profile"))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let get = |e| db("read profile")(e);
        let mut profiles: Vec<(i64, String, Vec<PublicIdentity>)> = Vec::new();
        for row in rows {
            let id: i64 = row.try_get(0).map_err(get)?;
            let identity = PublicIdentity {
                impu: row.try_get(2).map_err(get)?,
                subscription_id: row.try_get(3).map_err(get)?,
                irs: row.try_get(4).map_err(get)?,
                barred: row.try_get::<i64, _>(5).map_err(get)? != 0,
                reg_state: row.try_get(6).map_err(get)?,
            };
            match profiles.last_mut() {
                Some((last, _, ids)) if *last == id => ids.push(identity),
                _ => profiles.push((id, row.try_get(1).map_err(get)?, vec![identity])),
            }
        }
        Ok(Some(SubscriptionProfile {
            impi: impi.to_owned(),
            profiles: profiles.into_iter().map(|(_, x, ids)| (x, ids)).collect(),
        }))
    }

    /// Private identities in order, `limit` from `offset` (admin listing).
    pub async fn list_impis(&self, offset: i64, limit: i64) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT impi FROM private_identity ORDER BY impi LIMIT $1 OFFSET $2")
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await
            .map_err(db("list subscribers"))
    }

    /// The registered public identities (REGISTERED, not UNREGISTERED), in order, with the
    /// S-CSCF of their subscription (`imsctl registrations`).
    pub async fn registered_identities(
        &self,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<RegisteredIdentity>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.impu, (SELECT MIN(a.impi) FROM impi_impu a WHERE a.impu = p.impu),              s.scscf_name, s.scscf_host FROM public_identity p              JOIN subscription s ON s.id = p.subscription_id              WHERE p.reg_state = $1 ORDER BY p.impu LIMIT $2 OFFSET $3",
        )
        .bind(RegState::Registered as i64)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await
        .map_err(db("list registrations"))?;
        let get = |e| db("list registrations")(e);
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let scscf_name: Option<String> = r.try_get(2).map_err(get)?;
            out.push(RegisteredIdentity {
                impu: r.try_get(0).map_err(get)?,
                impi: r.try_get(1).map_err(get)?,
                scscf: scscf_name.map(|server_name| ScscfAssignment {
                    server_name,
                    diameter_host: r.try_get(3).ok().flatten(),
                }),
            });
        }
        Ok(out)
    }

    /// One subscriber, without secrets (`None` for an unknown IMPI).
    pub async fn subscriber(&self, impi: &str) -> Result<Option<SubscriberView>, StoreError> {
        let row = sqlx::query(
            "SELECT s.name, i.auth_scheme, i.sqn, s.capability_set, s.scscf_name, s.scscf_host \
             FROM private_identity i JOIN subscription s ON s.id = i.subscription_id WHERE i.impi = $1",
        )
        .bind(impi)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read subscriber"))?;
        let Some(row) = row else { return Ok(None) };
        let get = |e| db("read subscriber")(e);
        let scheme: String = row.try_get(1).map_err(get)?;
        let sqn: i64 = row.try_get(2).map_err(get)?;
        let scscf_name: Option<String> = row.try_get(4).map_err(get)?;
        let ids = sqlx::query(
            "SELECT p.impu, p.subscription_id, p.irs, p.barred, p.reg_state FROM impi_impu a \
             JOIN public_identity p ON p.impu = a.impu WHERE a.impi = $1 ORDER BY p.impu",
        )
        .bind(impi)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read subscriber"))?;
        let mut public_identities = Vec::with_capacity(ids.len());
        for r in ids {
            public_identities.push(PublicIdentity {
                impu: r.try_get(0).map_err(get)?,
                subscription_id: r.try_get(1).map_err(get)?,
                irs: r.try_get(2).map_err(get)?,
                barred: r.try_get::<i64, _>(3).map_err(get)? != 0,
                reg_state: r.try_get(4).map_err(get)?,
            });
        }
        Ok(Some(SubscriberView {
            name: row.try_get(0).map_err(get)?,
            impi: impi.to_owned(),
            sqn: (scheme == "aka").then_some(sqn as u64),
            auth_scheme: scheme,
            public_identities,
            capability_set: row.try_get(3).map_err(get)?,
            scscf: scscf_name.map(|server_name| ScscfAssignment {
                server_name,
                diameter_host: row.try_get(5).ok().flatten(),
            }),
        }))
    }

    /// Removes every subscription (tests and benchmarks on a shared database).
    pub async fn delete_all_subscribers(&self) -> Result<u64, StoreError> {
        let res = sqlx::query("DELETE FROM subscription")
            .execute(&self.pool)
            .await
            .map_err(db("delete all subscribers"))?;
        Ok(res.rows_affected())
    }
}

/// Checkpoints the WAL of a file SQLite store every [`CHECKPOINT_EVERY`] until `stop` is
/// dropped (the last [`Store`] clone went) or the pool is closed.
async fn checkpoints(pool: AnyPool, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        if pool.is_closed() {
            return;
        }
        // PASSIVE: copies what no reader still needs, waits for no one.
        match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("WAL checkpoints work again");
            }
            Ok(_) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, retry_ms = CHECKPOINT_EVERY.as_millis() as u64,
                    "WAL checkpoint failed (tried again at every tick; the commits \
                    checkpoint past the WAL's limit meanwhile)");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OncePerSecond;

    #[test]
    fn slow_write_lines_go_once_a_second_and_count_the_rest() {
        let limit = OncePerSecond::new();
        assert_eq!(limit.admit(1_000), Some(0), "the first goes");
        assert_eq!(limit.admit(1_400), None);
        assert_eq!(limit.admit(1_999), None);
        assert_eq!(
            limit.admit(2_000),
            Some(2),
            "a second later, with the two unsaid"
        );
        assert_eq!(limit.admit(2_001), None);
        assert_eq!(limit.admit(9_000), Some(1));
        assert_eq!(limit.admit(10_000), Some(0));
    }
}
