//! The S-CSCF configuration (`configs/lab/scscf.toml` is the commented example): where SIP
//! listens, our name (Server-Name on Cx and the Service-Route host), the home realm and
//! domains, the registration store, the registration interval limits, the reg-await-auth
//! timer, the lockout after repeated authentication failures, the admin HTTP address, the limits of `reg` event
//! subscriptions, where requests toward our users go (DNS servers, an optional fixed I-CSCF),
//! and the `[diameter]` section (how to reach the HSS).
//! Unknown keys are rejected;
//! [`Config::validate`] checks what serde cannot.

use std::net::SocketAddr;

use ims_net::diameter::CxClientConfig;
use ims_sip::SipUri;
use serde::Deserialize;

/// The S-CSCF configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// SIP address (UDP and TCP on the same port).
    pub sip_listen: SocketAddr,
    /// The admin HTTP API (`/health`, `/v1/registrations`): none when unset. A loopback
    /// address only: it has no authentication and shows users' contact addresses.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Our SIP URI, e.g. `sip:scscf1.hims.net:5060`: Server-Name in MAR/SAR (the HSS stores
    /// it) and the host of our Service-Route.
    pub name: String,
    /// The home realm: the Digest `realm` of AKA challenges (TS 24.229: the home domain).
    pub realm: String,
    /// Domains we register users for (the REGISTER Request-URI). Empty: `realm` only.
    #[serde(default)]
    pub home_domains: Vec<String>,
    /// Registration store: `sqlite://path` (created at start) or `postgres://...`.
    #[serde(default = "default_database")]
    pub database: String,
    /// Shortest registration interval accepted (seconds); shorter gets 423 with Min-Expires.
    #[serde(default = "default_min_expires")]
    pub min_expires: u32,
    /// Longest registration interval granted (seconds); longer is cut down to it.
    #[serde(default = "default_max_expires")]
    pub max_expires: u32,
    /// Interval granted when the REGISTER names none (seconds).
    #[serde(default = "default_expires")]
    pub default_expires: u32,
    /// reg-await-auth: how long a challenge stays valid (TS 24.229 Table 7.8.1: 4 minutes).
    #[serde(default = "default_reg_await_auth")]
    pub reg_await_auth_seconds: u64,
    /// Wrong answers to our challenges in a row for one IMPI before it is locked out (0:
    /// never). See "Lockout" in the registrar's docs for what it is keyed by and why.
    #[serde(default = "default_auth_failures_before_lockout")]
    pub auth_failures_before_lockout: u32,
    /// How long a lockout lasts (seconds): every REGISTER of the IMPI that would need
    /// authenticating gets 403 meanwhile, without asking the HSS for a vector.
    #[serde(default = "default_auth_lockout_seconds")]
    pub auth_lockout_seconds: u64,
    /// Shortest `reg` event subscription accepted (seconds); a SUBSCRIBE asking for less
    /// (but not 0, a fetch) gets 423 with Min-Expires.
    #[serde(default = "default_subscribe_min_expires")]
    pub subscribe_min_expires: u32,
    /// Longest `reg` event subscription granted (seconds); longer is cut down to it.
    #[serde(default = "default_subscribe_max_expires")]
    pub subscribe_max_expires: u32,
    /// Log filter when RUST_LOG is unset.
    #[serde(default = "default_log")]
    pub log: String,
    /// DNS servers for RFC 3263 lookups: the I-CSCF of a callee's home domain, the P-CSCF
    /// named in a callee's Path. Empty (the default): only numeric hosts are reached.
    #[serde(default)]
    pub dns: Vec<SocketAddr>,
    /// A fixed I-CSCF (`sip:icscf1.hims.net:5060`) for requests toward our own users,
    /// instead of RFC 3263 on the callee's domain.
    #[serde(default)]
    pub icscf: Option<String>,
    /// Cx towards the HSS.
    pub diameter: CxClientConfig,
}

fn default_database() -> String {
    "sqlite://scscf.sqlite".to_owned()
}
fn default_min_expires() -> u32 {
    60
}
fn default_max_expires() -> u32 {
    3600
}
fn default_expires() -> u32 {
    600
}
fn default_reg_await_auth() -> u64 {
    240
}
fn default_auth_failures_before_lockout() -> u32 {
    5
}
fn default_auth_lockout_seconds() -> u64 {
    60
}
fn default_subscribe_min_expires() -> u32 {
    60
}
fn default_subscribe_max_expires() -> u32 {
    3600
}
fn default_log() -> String {
    "info".to_owned()
}

impl Config {
    /// Checks what serde cannot: the name is a SIP URI with a host, the realm is set, the
    /// expiry limits (registrations and subscriptions) are ordered, timers and the lockout are
    /// positive, and the `[diameter]` section.
    pub fn validate(&self) -> Result<(), String> {
        let uri = SipUri::parse(&self.name)
            .map_err(|e| format!("name `{}` is not a SIP URI: {e}", self.name))?;
        if uri.host_str.is_empty() {
            return Err(format!("name `{}` has no host", self.name));
        }
        if self.realm.trim().is_empty() {
            return Err("realm must be set (the home domain)".into());
        }
        if self.home_domains.iter().any(|d| d.trim().is_empty()) {
            return Err("home_domains must not hold an empty name".into());
        }
        if self.min_expires == 0 {
            return Err("min_expires must be at least 1".into());
        }
        if !(self.min_expires <= self.default_expires && self.default_expires <= self.max_expires) {
            return Err(format!(
                "expiry limits must satisfy min_expires ({}) <= default_expires ({}) <= max_expires ({})",
                self.min_expires, self.default_expires, self.max_expires
            ));
        }
        if self.subscribe_min_expires == 0
            || self.subscribe_min_expires > self.subscribe_max_expires
        {
            return Err(format!(
                "subscription limits must satisfy 1 <= subscribe_min_expires ({}) <= subscribe_max_expires ({})",
                self.subscribe_min_expires, self.subscribe_max_expires
            ));
        }
        if self.reg_await_auth_seconds == 0 {
            return Err("reg_await_auth_seconds must be at least 1".into());
        }
        if self.auth_failures_before_lockout > 0 && self.auth_lockout_seconds == 0 {
            return Err(
                "auth_lockout_seconds must be at least 1 (or auth_failures_before_lockout 0: no lockout)"
                    .into(),
            );
        }
        if !(self.database.starts_with("sqlite:")
            || self.database.starts_with("postgres://")
            || self.database.starts_with("postgresql://"))
        {
            return Err(format!(
                "database `{}` is neither sqlite:// nor postgres://",
                self.database
            ));
        }
        if let Some(a) = self.admin_listen
            && !a.ip().is_loopback()
        {
            return Err(format!(
                "admin_listen {a} is not a loopback address: the S-CSCF's admin API has no authentication and shows users' contacts, so it listens on loopback only"
            ));
        }
        if let Some(i) = &self.icscf {
            SipUri::parse(i).map_err(|e| format!("icscf `{i}` is not a SIP URI: {e}"))?;
        }
        self.diameter.validate()
    }

    /// `host[:port]` of our name: the host part of Service-Route.
    pub fn host_port(&self) -> String {
        SipUri::parse(&self.name)
            .map(|u| u.host_port_str().to_owned())
            .unwrap_or_else(|_| self.name.clone())
    }

    /// The domains we register users for (`realm` when `home_domains` is empty).
    pub fn domains(&self) -> Vec<String> {
        if self.home_domains.is_empty() {
            vec![self.realm.clone()]
        } else {
            self.home_domains.clone()
        }
    }
}
