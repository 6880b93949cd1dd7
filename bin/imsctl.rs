//! `imsctl`: the command line for the HSS admin API (provisioning). Prints the API's JSON
//! answers; on an error prints one line naming the problem (and the field) and exits 1.
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Provision the IMS core's HSS through its admin API")]
struct Cli {
    /// Base URL of the HSS admin API.
    #[arg(long, env = "IMS_HSS_URL", default_value = "http://127.0.0.40:8080")]
    url: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Subscribers.
    #[command(subcommand)]
    Subscriber(Sub),
    /// S-CSCF capability sets.
    #[command(subcommand, name = "capability-set")]
    CapabilitySet(Caps),
    /// Is the HSS up, and on which database.
    Health,
    /// The HSS's Prometheus metrics.
    Metrics,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Sub {
    /// Provision one subscriber (AKA with --k and --op/--opc, or digest with --realm and --password/--ha1).
    Add {
        #[arg(long)]
        impi: String,
        /// A public identity (sip:, sips: or tel:); repeat for several.
        #[arg(long = "impu", required = true)]
        impus: Vec<String>,
        #[arg(long)]
        k: Option<String>,
        #[arg(long)]
        op: Option<String>,
        #[arg(long)]
        opc: Option<String>,
        #[arg(long)]
        amf: Option<String>,
        #[arg(long)]
        sqn: Option<u64>,
        #[arg(long)]
        realm: Option<String>,
        #[arg(long)]
        password: Option<String>,
        #[arg(long)]
        ha1: Option<String>,
        #[arg(long)]
        capability_set: Option<String>,
        /// A visited network allowed besides the home network; repeat for several.
        #[arg(long = "roaming")]
        roaming: Vec<String>,
    },
    /// Show one subscriber (never its secrets).
    Show { impi: String },
    /// List private identities.
    List {
        #[arg(long, default_value_t = 0)]
        offset: i64,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Remove a subscriber with its whole subscription.
    Delete { impi: String },
    /// Administrative deregistration: the HSS sends RTR to the serving S-CSCF.
    Deregister { impi: String },
    /// Push the current profile: the HSS sends PPR (User-Data) to the serving S-CSCF.
    PushProfile { impi: String },
    /// Bulk import from a CSV file (see the README for the columns).
    Import { file: std::path::PathBuf },
}

#[derive(Subcommand)]
enum Caps {
    /// Create or replace a capability set.
    Put {
        name: String,
        #[arg(long, value_delimiter = ',')]
        mandatory: Vec<u32>,
        #[arg(long, value_delimiter = ',')]
        optional: Vec<u32>,
        /// A preferred S-CSCF (SIP URI); repeat for several.
        #[arg(long = "server")]
        servers: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let base = cli.url.trim_end_matches('/');
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let res = match cli.cmd {
        Cmd::Health => agent.get(format!("{base}/health")).call(),
        Cmd::Metrics => agent.get(format!("{base}/metrics")).call(),
        Cmd::Subscriber(Sub::Deregister { impi }) => agent
            .post(format!("{base}/v1/subscribers/{impi}/deregister"))
            .send_empty(),
        Cmd::Subscriber(Sub::PushProfile { impi }) => agent
            .post(format!("{base}/v1/subscribers/{impi}/push-profile"))
            .send_empty(),
        Cmd::Subscriber(Sub::Show { impi }) => {
            agent.get(format!("{base}/v1/subscribers/{impi}")).call()
        }
        Cmd::Subscriber(Sub::List { offset, limit }) => agent
            .get(format!(
                "{base}/v1/subscribers?offset={offset}&limit={limit}"
            ))
            .call(),
        Cmd::Subscriber(Sub::Delete { impi }) => {
            agent.delete(format!("{base}/v1/subscribers/{impi}")).call()
        }
        Cmd::Subscriber(Sub::Import { file }) => match std::fs::read(&file) {
            Ok(csv) => agent
                .post(format!("{base}/v1/subscribers/import"))
                .header("content-type", "text/csv")
                .send(&csv[..]),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        },
        Cmd::Subscriber(Sub::Add {
            impi,
            impus,
            k,
            op,
            opc,
            amf,
            sqn,
            realm,
            password,
            ha1,
            capability_set,
            roaming,
        }) => {
            let mut body = json!({ "impi": impi, "impus": impus, "roaming_allowed": roaming });
            if let Some(k) = k {
                let mut aka = json!({ "k": k, "op": op, "opc": opc, "sqn": sqn.unwrap_or(0) });
                if let Some(amf) = amf {
                    aka["amf"] = json!(amf);
                }
                strip_nulls(&mut aka);
                body["aka"] = aka;
            }
            if let Some(realm) = realm {
                let mut d = json!({ "realm": realm, "password": password, "ha1": ha1 });
                strip_nulls(&mut d);
                body["digest"] = d;
            }
            if let Some(c) = capability_set {
                body["capability_set"] = json!(c);
            }
            agent.post(format!("{base}/v1/subscribers")).send_json(body)
        }
        Cmd::CapabilitySet(Caps::Put {
            name,
            mandatory,
            optional,
            servers,
        }) => agent
            .put(format!("{base}/v1/capability-sets/{name}"))
            .send_json(
                json!({ "mandatory": mandatory, "optional": optional, "server_names": servers }),
            ),
    };
    let mut resp = match res {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot reach the HSS admin API at {base}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = resp.status();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_str(&text).ok();
    if status.is_success() {
        match parsed {
            Some(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or(text)),
            None if text.is_empty() => println!("ok"),
            None => println!("{text}"),
        }
        ExitCode::SUCCESS
    } else {
        let msg = parsed
            .as_ref()
            .and_then(|v| v["error"].as_str())
            .unwrap_or(text.as_str())
            .to_owned();
        match parsed.as_ref().and_then(|v| v["field"].as_str()) {
            Some(f) => eprintln!("error: {msg} (HTTP {}, field `{f}`)", status.as_u16()),
            None => eprintln!("error: {msg} (HTTP {})", status.as_u16()),
        }
        ExitCode::FAILURE
    }
}

fn strip_nulls(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, x| !x.is_null());
    }
}
