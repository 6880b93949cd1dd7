//! `imsctl`: the command line for the HSS admin API (provisioning). Prints the API's JSON
//! answers; on an error prints one line naming the problem (and the field) and exits 1.
//! `imsctl registrations` joins two views: the HSS's (who is registered, at which S-CSCF)
//! and, for each S-CSCF given with `--scscf URL` (its admin API), the S-CSCF's (contacts,
//! until when, through which P-CSCF); what no S-CSCF was asked about stays `null`.
//! `imsctl ladder` draws a capture as a call-flow ladder (`ladder.rs`; it needs no HSS).
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

mod ladder;

#[derive(Parser)]
#[command(about = "Provision the IMS core's HSS through its admin API; draw a capture as a ladder")]
struct Cli {
    /// Base URL of the HSS admin API.
    #[arg(long, env = "IMS_HSS_URL", default_value = "http://127.0.0.40:8080")]
    url: String,
    /// The HSS's admin_token (sent as `Authorization: Bearer`); needed when the HSS has one.
    /// Best given by the environment, where `ps` does not show it.
    #[arg(long, env = "IMS_HSS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per process, as `Sub` below: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
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
    /// The HSS's Prometheus metrics, or another daemon's with --from.
    Metrics {
        /// Another daemon's admin API instead of the HSS's (no token sent), e.g. the
        /// P-CSCF's http://127.0.0.10:8080, the I-CSCF's http://127.0.0.20:8080, the
        /// S-CSCF's http://127.0.0.30:8080.
        #[arg(long)]
        from: Option<String>,
    },
    /// Who is registered, at which S-CSCF, through which P-CSCF, until when.
    Registrations {
        /// An S-CSCF's admin API (e.g. http://127.0.0.30:8080), for the contacts, P-CSCF
        /// and expiry of the users it serves; repeat for several.
        #[arg(long = "scscf", env = "IMS_SCSCF_URL", value_delimiter = ',')]
        scscfs: Vec<String>,
    },
    /// A capture as a call-flow ladder (Mermaid or SVG): one column per address, one arrow
    /// per SIP, Diameter or DNS message, as tshark decodes it.
    Ladder(ladder::Args),
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
        /// The service profile's InitialFilterCriteria elements (TS 29.228 XML, as they go
        /// into User-Data); with one for the unregistered state, a request to the user while
        /// unregistered goes to an S-CSCF instead of being refused 480.
        #[arg(long)]
        ifc_xml: Option<String>,
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
    /// Bulk import from a CSV file (see the README for the columns), streamed in parts of
    /// --batch rows with a progress line on stderr, so that files of millions of rows import.
    Import {
        file: std::path::PathBuf,
        #[arg(long, default_value_t = 5000)]
        batch: usize,
    },
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
    // The ladder reads captures, not the HSS: before the token and the HTTP agent.
    let cmd = match cli.cmd {
        Cmd::Ladder(args) => return ladder::main(args),
        cmd => cmd,
    };
    let base = cli.url.trim_end_matches('/');
    let mut config = ureq::Agent::config_builder().http_status_as_error(false);
    if let Some(token) = cli
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let bearer = match ureq::http::HeaderValue::from_str(&format!("Bearer {token}")) {
            Ok(v) => v,
            Err(_) => {
                eprintln!("error: IMS_HSS_TOKEN holds characters a header cannot carry");
                return ExitCode::FAILURE;
            }
        };
        config = config.middleware(
            move |mut req: ureq::http::Request<ureq::SendBody<'_>>,
                  next: ureq::middleware::MiddlewareNext<'_>| {
                req.headers_mut()
                    .insert(ureq::http::header::AUTHORIZATION, bearer.clone());
                next.handle(req)
            },
        );
    }
    let agent: ureq::Agent = config.build().into();
    let res = match cmd {
        Cmd::Registrations { scscfs } => {
            // The HSS's token goes to the HSS only.
            let plain: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            return registrations(&agent, &plain, base, &scscfs);
        }
        Cmd::Health => agent.get(format!("{base}/health")).call(),
        Cmd::Metrics { from: None } => agent.get(format!("{base}/metrics")).call(),
        Cmd::Metrics { from: Some(url) } => {
            // The HSS's token goes to the HSS only.
            let plain: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            plain
                .get(format!("{}/metrics", url.trim_end_matches('/')))
                .call()
        }
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
        Cmd::Subscriber(Sub::Import { file, batch }) => {
            return import(&agent, base, &file, batch.max(1));
        }
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
            ifc_xml,
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
            if let Some(x) = ifc_xml {
                body["ifc_xml"] = json!(x);
            }
            agent.post(format!("{base}/v1/subscribers")).send_json(body)
        }
        Cmd::Ladder(args) => return ladder::main(args),
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
    match answer(res, base) {
        Ok(Body::Json(v)) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(Body::Text(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Body::Empty) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// A successful answer of the API.
enum Body {
    Json(Value),
    /// Not JSON (the metrics text): printed as it is.
    Text(String),
    Empty,
}

/// The API's answer, or the one-line error to print.
fn answer(
    res: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    base: &str,
) -> Result<Body, String> {
    let mut resp = res.map_err(|e| format!("cannot reach the HSS admin API at {base}: {e}"))?;
    let status = resp.status();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_str(&text).ok();
    if status.is_success() {
        return Ok(match parsed {
            Some(v) => Body::Json(v),
            None if text.is_empty() => Body::Empty,
            None => Body::Text(text),
        });
    }
    let msg = parsed
        .as_ref()
        .and_then(|v| v["error"].as_str())
        .unwrap_or(text.as_str())
        .to_owned();
    Err(match parsed.as_ref().and_then(|v| v["field"].as_str()) {
        Some(f) => format!("{msg} (HTTP {}, field `{f}`)", status.as_u16()),
        None => format!("{msg} (HTTP {})", status.as_u16()),
    })
}

/// Imports a CSV file in parts of `batch` rows, each sent with the header row and the line
/// number of its first row (so that the HSS names lines of the whole file). The file is read
/// as it goes, never whole, by the `csv` crate the HSS parses it with (a quoted cell may hold
/// newlines; blank lines are skipped).
fn import(agent: &ureq::Agent, base: &str, file: &std::path::Path, batch: usize) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::FAILURE
    };
    let mut rdr = match std::fs::File::open(file) {
        // Rows of another length go on to the HSS, which names the problem.
        Ok(f) => csv::ReaderBuilder::new().flexible(true).from_reader(f),
        Err(e) => return fail(format!("cannot read {}: {e}", file.display())),
    };
    let header = match rdr.byte_headers() {
        Ok(h) if h.is_empty() => {
            return fail(format!("{} is empty (no header row)", file.display()));
        }
        Ok(h) => h.clone(),
        Err(e) => return fail(format!("cannot read {}: {e}", file.display())),
    };
    let mut records = rdr.into_byte_records();
    let mut imported = 0u64;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    loop {
        let mut part = csv::Writer::from_writer(Vec::new());
        let mut first_line = None;
        let mut rows = 0;
        let mut wrote = part.write_byte_record(&header);
        for rec in records.by_ref() {
            let rec = match rec {
                Ok(r) => r,
                Err(e) => return fail(format!("cannot read {}: {e}", file.display())),
            };
            first_line.get_or_insert(rec.position().map_or(0, csv::Position::line));
            wrote = wrote.and(part.write_byte_record(&rec));
            rows += 1;
            if rows == batch {
                break;
            }
        }
        let Some(first_line) = first_line else { break };
        let body = match wrote.and_then(|()| {
            part.into_inner()
                .map_err(|e| csv::Error::from(e.into_error()))
        }) {
            Ok(b) => b,
            Err(e) => return fail(format!("cannot write a part of {}: {e}", file.display())),
        };
        let res = agent
            .post(format!(
                "{base}/v1/subscribers/import?first_line={first_line}"
            ))
            .header("content-type", "text/csv")
            .send(&body[..]);
        match answer(res, base) {
            Ok(Body::Json(v)) => imported += v["imported"].as_u64().unwrap_or(0),
            Ok(_) => {}
            Err(msg) if imported > 0 => {
                return fail(format!(
                    "{msg}; the {imported} rows before line {first_line} were imported"
                ));
            }
            Err(msg) => return fail(msg),
        }
        if tty {
            eprint!("\rimported {imported} rows");
        }
    }
    if tty {
        eprintln!();
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({ "imported": imported })).unwrap_or_default()
    );
    ExitCode::SUCCESS
}

/// `imsctl registrations`: the HSS's registered identities (page by page), each with what
/// the S-CSCFs in `scscfs` say about it (matched by IMPU or its implicit registration set).
fn registrations(
    agent: &ureq::Agent,
    plain: &ureq::Agent,
    base: &str,
    scscfs: &[String],
) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::FAILURE
    };
    // What the S-CSCFs hold, by lowercase IMPU (every URI of each implicit set).
    let mut held: std::collections::HashMap<String, (String, Value)> = Default::default();
    for url in scscfs {
        let url = url.trim_end_matches('/');
        let v = match answer(plain.get(format!("{url}/v1/registrations")).call(), url) {
            Ok(Body::Json(v)) => v,
            Ok(_) => return fail(format!("{url}/v1/registrations: not JSON")),
            Err(msg) => return fail(msg.replace("HSS admin API", "S-CSCF admin API")),
        };
        let name = v["scscf"].as_str().unwrap_or(url).to_owned();
        for reg in v["registrations"].as_array().into_iter().flatten() {
            let uris = std::iter::once(&reg["impu"])
                .chain(reg["associated_uris"].as_array().into_iter().flatten());
            for u in uris.filter_map(Value::as_str) {
                held.insert(u.to_ascii_lowercase(), (name.clone(), reg.clone()));
            }
        }
    }
    const PAGE: usize = 10_000;
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let page = match answer(
            agent
                .get(format!(
                    "{base}/v1/registrations?offset={offset}&limit={PAGE}"
                ))
                .call(),
            base,
        ) {
            Ok(Body::Json(v)) => v,
            Ok(_) => return fail(format!("{base}/v1/registrations: not JSON")),
            Err(msg) => return fail(msg),
        };
        let regs = page["registrations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for r in &regs {
            let impu = r["impu"].as_str().unwrap_or_default();
            let scscf = r["scscf"]["server_name"].clone();
            let mut row = json!({ "impu": impu, "impi": r["impi"], "scscf": scscf, "pcscf": null, "until": null });
            if let Some((name, reg)) = held.get(&impu.to_ascii_lowercase()) {
                let contacts = reg["contacts"].as_array().cloned().unwrap_or_default();
                let mut pcscfs: Vec<Value> = contacts.iter().map(|c| c["pcscf"].clone()).collect();
                pcscfs.dedup();
                row["pcscf"] = match pcscfs.len() {
                    1 => pcscfs.remove(0),
                    0 => Value::Null,
                    _ => Value::Array(pcscfs),
                };
                row["until"] = reg["until"].clone();
                row["contacts"] = json!(
                    contacts
                        .iter()
                        .map(|c| json!({ "contact": c["contact"], "until": c["until"] }))
                        .collect::<Vec<_>>()
                );
                if scscf.as_str() != Some(name.as_str()) {
                    row["held_by"] = json!(name);
                }
            }
            out.push(row);
        }
        if regs.len() < PAGE {
            break;
        }
        offset += PAGE;
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({ "registrations": out })).unwrap_or_default()
    );
    ExitCode::SUCCESS
}

fn strip_nulls(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, x| !x.is_null());
    }
}
