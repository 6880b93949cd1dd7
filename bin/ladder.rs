//! `imsctl ladder CAPTURE...`: a capture drawn as the call-flow figures of 3GPP TS 24.228 draw
//! a registration: one column per network element (UE, P-CSCF, DNS, I-CSCF, S-CSCF, HSS), one
//! arrow per SIP, Diameter or DNS message, top to bottom, labelled with its key fields
//! (`REGISTER (1)`, `401 Unauthorized (REGISTER)`, `UAR`, `UAA 2001`, `NAPTR? hims.net`).
//! Output is Mermaid text (a `sequenceDiagram`, the default) or a self-contained SVG.
//!
//! Wireshark's dissectors do the decoding: each capture is read by `tshark -T json` (one
//! process per file, its whole output held in memory: a ladder is for a capture of a few
//! flows, not of a load run). Several captures (say one per namespace of the test lab) are
//! merged by capture time, and a message captured more than once — on the `any` interface,
//! which sees a loopback packet both ways, or at both ends of a link — is drawn once: copies
//! are the same bytes between the same addresses and ports within [`SAME_MESSAGE_WINDOW`],
//! far less than any retransmission interval.
//!
//! Columns are addresses; `--name ADDR=NAME` names them, and the one-host lab's addresses
//! (`configs/lab/ims-dns.toml`'s address plan) are named without it. Columns stand in order of
//! first appearance, except that those named after the registration's roles stand in the
//! figures' order among themselves. Diameter's peer housekeeping (CER/CEA, DWR/DWA, DPR/DPA)
//! is left out unless `--all`.
//!
//! Errors (no tshark, a file it cannot read) are one line on stderr and exit code 2.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use serde_json::Value;

/// Copies of one message seen in several places are captured within this of each other
/// (microseconds in practice); a retransmission comes T1 (500 ms) or at least tens of
/// milliseconds later.
pub const SAME_MESSAGE_WINDOW: Nanos = Nanos(20_000_000);

/// The roles of a registration in the order the figures draw them.
const ROLES: [&str; 6] = ["UE", "P-CSCF", "DNS", "I-CSCF", "S-CSCF", "HSS"];

/// The one-host lab's address plan (`configs/lab/ims-dns.toml`).
const LAB_NAMES: [(&str, &str); 5] = [
    ("127.0.0.10", "P-CSCF"),
    ("127.0.0.20", "I-CSCF"),
    ("127.0.0.30", "S-CSCF"),
    ("127.0.0.40", "HSS"),
    ("127.0.0.50", "DNS"),
];

/// Diameter and DNS on the ports the lab uses but tshark does not know (the lab's DNS on
/// 10053); 3868 is Diameter's own port, named anyway so that nothing depends on a profile.
const DECODE_AS: [&str; 3] = [
    "tcp.port==3868,diameter",
    "udp.port==10053,dns",
    "tcp.port==10053,dns",
];

#[derive(clap::Args)]
pub struct Args {
    /// Capture files (pcap or pcapng), read by tshark; several are merged by time and a
    /// message captured in more than one is drawn once.
    #[arg(required = true, value_name = "CAPTURE")]
    captures: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Mermaid)]
    format: Format,
    /// Names a column (an address) instead of the address itself, e.g. `10.10.2.2=P-CSCF`;
    /// repeat for several. The one-host lab's addresses are named without it.
    #[arg(long = "name", value_name = "ADDR=NAME", value_parser = parse_name)]
    names: Vec<(IpAddr, String)>,
    /// Keep Diameter's peer housekeeping (CER/CEA, DWR/DWA, DPR/DPA).
    #[arg(long)]
    all: bool,
    /// Write here instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// A tshark decode-as rule for a port it does not know, e.g. `udp.port==5070,sip`;
    /// repeat for several (Diameter on TCP 3868 and DNS on 10053 are always decoded).
    #[arg(short = 'd', long = "decode-as", value_name = "RULE")]
    decode_as: Vec<String>,
    /// The tshark to run.
    #[arg(long, env = "TSHARK", default_value = "tshark")]
    tshark: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Format {
    /// A Mermaid `sequenceDiagram`.
    Mermaid,
    /// A self-contained SVG image.
    Svg,
}

/// `imsctl ladder`.
pub fn main(args: Args) -> ExitCode {
    let mut messages = Vec::new();
    for file in &args.captures {
        match read_capture(&args.tshark, file, &args.decode_as) {
            Ok(m) => messages.extend(m),
            Err(msg) => {
                eprintln!("error: {msg}");
                return ExitCode::from(2);
            }
        }
    }
    if !args.all {
        messages.retain(|m| !m.what.is_peer_housekeeping());
    }
    let messages = merge(messages);
    if messages.is_empty() {
        eprintln!("warning: no SIP, Diameter or DNS message in the capture");
    }
    let mut names = Names::lab();
    for (addr, name) in args.names {
        names.0.insert(addr, name);
    }
    let ladder = Ladder::new(&messages, &names);
    let text = match args.format {
        Format::Mermaid => ladder.mermaid(),
        Format::Svg => ladder.svg(),
    };
    let written = match &args.output {
        Some(path) => {
            std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
        }
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .write_all(text.as_bytes())
                .map_err(|e| format!("cannot write the ladder: {e}"))
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// `ADDR=NAME` of `--name`.
fn parse_name(s: &str) -> Result<(IpAddr, String), String> {
    let (addr, name) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected ADDR=NAME"))?;
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("`{addr}` is not an IP address"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("`{s}`: the name is empty"));
    }
    Ok((addr, name.to_owned()))
}

/// A capture time: nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Nanos(pub u64);

impl Nanos {
    /// tshark's `frame.time_epoch`: `1700000000.004000000`.
    fn parse(s: &str) -> Option<Nanos> {
        let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
        let secs: u64 = secs.parse().ok()?;
        let frac = frac.get(..frac.len().min(9))?;
        let mut nanos: u64 = if frac.is_empty() {
            0
        } else {
            frac.parse().ok()?
        };
        for _ in frac.len()..9 {
            nanos *= 10;
        }
        secs.checked_mul(1_000_000_000)?
            .checked_add(nanos)
            .map(Nanos)
    }
}

/// What a message is, with the fields its arrow shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    SipRequest {
        method: String,
        cseq: Option<u32>,
    },
    SipResponse {
        status: u16,
        reason: String,
        /// The method of its CSeq.
        method: Option<String>,
    },
    Diameter {
        command: u32,
        request: bool,
        /// Experimental-Result-Code when present, else Result-Code.
        result: Option<u32>,
    },
    DnsQuery {
        qtype: u16,
        name: String,
    },
    DnsAnswer {
        qtype: u16,
        name: String,
        rcode: u8,
        /// The answer records' data (an address, a target, a replacement).
        answers: Vec<String>,
    },
}

impl What {
    /// The arrow's label.
    pub fn label(&self) -> String {
        match self {
            What::SipRequest { method, cseq } => match cseq {
                Some(n) => format!("{method} ({n})"),
                None => method.clone(),
            },
            What::SipResponse {
                status,
                reason,
                method,
            } => {
                let mut s = status.to_string();
                if !reason.is_empty() {
                    s.push(' ');
                    s.push_str(reason);
                }
                if let Some(m) = method {
                    let _ = write!(s, " ({m})");
                }
                s
            }
            What::Diameter {
                command,
                request,
                result,
            } => {
                let mut s = match diameter_command(*command) {
                    Some(abbrev) => format!("{abbrev}{}", if *request { 'R' } else { 'A' }),
                    None if *request => format!("Diameter {command} request"),
                    None => format!("Diameter {command} answer"),
                };
                if let Some(r) = result {
                    let _ = write!(s, " {r}");
                }
                s
            }
            What::DnsQuery { qtype, name } => format!("{}? {name}", dns_type(*qtype)),
            What::DnsAnswer {
                qtype,
                name,
                rcode,
                answers,
            } => {
                let head = format!("{} {name}", dns_type(*qtype));
                if *rcode != 0 {
                    return format!("{head}: {}", dns_rcode(*rcode));
                }
                match answers.len() {
                    0 => format!("{head}: no answer"),
                    1 | 2 => format!("{head}: {}", answers.join(", ")),
                    n => format!("{head}: {}, {} (+{} more)", answers[0], answers[1], n - 2),
                }
            }
        }
    }

    /// Diameter's base-protocol traffic between peers (capabilities, watchdog, disconnect).
    pub fn is_peer_housekeeping(&self) -> bool {
        matches!(
            self,
            What::Diameter {
                command: 257 | 280 | 282,
                ..
            }
        )
    }
}

/// The abbreviation of a Diameter command, without its R/A.
fn diameter_command(code: u32) -> Option<&'static str> {
    Some(match code {
        257 => "CE",
        280 => "DW",
        282 => "DP",
        300 => "UA",
        301 => "SA",
        302 => "LI",
        303 => "MA",
        304 => "RT",
        305 => "PP",
        _ => return None,
    })
}

fn dns_type(t: u16) -> String {
    match t {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        35 => "NAPTR".into(),
        t => format!("TYPE{t}"),
    }
}

fn dns_rcode(r: u8) -> String {
    match r {
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        r => format!("RCODE {r}"),
    }
}

/// One message as captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub at: Nanos,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub what: What,
    /// The same for every copy of this message on one hop (ports and the message's bytes or
    /// ids), different for the next hop and for another message.
    pub copy_key: u64,
}

/// Merges messages from one or more captures: in time order, each message once.
pub fn merge(mut messages: Vec<Message>) -> Vec<Message> {
    messages.sort_by_key(|m| m.at);
    let mut last_seen: HashMap<u64, Nanos> = HashMap::new();
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    for m in messages {
        if let Some(&t) = last_seen.get(&m.copy_key)
            && m.at.0.saturating_sub(t.0) <= SAME_MESSAGE_WINDOW.0
        {
            continue;
        }
        last_seen.insert(m.copy_key, m.at);
        out.push(m);
    }
    out
}

/// Runs tshark over `file` and returns its SIP, Diameter and DNS messages.
fn read_capture(tshark: &Path, file: &Path, decode_as: &[String]) -> Result<Vec<Message>, String> {
    // Our own words for a missing file, before tshark's.
    std::fs::File::open(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut cmd = Command::new(tshark);
    cmd.arg("-n")
        .arg("-r")
        .arg(file)
        .args(["-o", "sip.desegment_body:TRUE"])
        .args(["-Y", "(sip || diameter || dns) && !icmp && !icmpv6"])
        .args(["-T", "json", "--no-duplicate-keys"])
        .args(["-J", "frame ip ipv6 udp tcp sctp sip diameter dns"]);
    for rule in DECODE_AS
        .iter()
        .copied()
        .chain(decode_as.iter().map(String::as_str))
    {
        cmd.arg("-d").arg(rule);
    }
    let out = cmd.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "{} not found: install Wireshark's tshark (Debian: apt-get install tshark) or name it with --tshark",
            tshark.display()
        ),
        _ => format!("cannot run {}: {e}", tshark.display()),
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // tshark's complaint, without its warning about running as root.
    let complaint = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("Running as user"))
        .unwrap_or("")
        .to_owned();
    let frames: Option<Vec<Value>> = serde_json::from_slice(&out.stdout).ok();
    match frames {
        // A capture cut short (still being written) yields the frames before the cut.
        Some(frames) if out.status.success() || !frames.is_empty() => {
            if !out.status.success() {
                eprintln!("warning: {}: {complaint}", file.display());
            }
            Ok(frames.iter().flat_map(messages_of_frame).collect())
        }
        _ if !out.status.success() => Err(format!(
            "tshark cannot read {}: {}",
            file.display(),
            if complaint.is_empty() {
                format!("exit status {}", out.status)
            } else {
                complaint
            }
        )),
        _ => Err(format!(
            "tshark's output for {} is not the JSON expected",
            file.display()
        )),
    }
}

/// The first value named `key` anywhere under `v` (tshark nests fields in `_tree` objects).
fn find<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|x| find(x, key))),
        Value::Array(items) => items.iter().find_map(|x| find(x, key)),
        _ => None,
    }
}

/// A field as text (the first one, when tshark merged several into an array).
fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    match find(v, key)? {
        Value::String(s) => Some(s),
        Value::Array(a) => a.first().and_then(Value::as_str),
        _ => None,
    }
}

fn number<T: std::str::FromStr>(v: &Value, key: &str) -> Option<T> {
    text(v, key).and_then(|s| s.trim().parse().ok())
}

/// A boolean flag as tshark's JSON writes it ("1"/"0").
fn flag(v: &Value, key: &str) -> bool {
    matches!(text(v, key), Some("1" | "True" | "true"))
}

/// A protocol layer, once or several times (several SIP or Diameter messages in one TCP
/// segment).
fn each<'a>(layers: &'a Value, proto: &str) -> Vec<&'a Value> {
    match layers.get(proto) {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(v @ Value::Object(_)) => vec![v],
        _ => Vec::new(),
    }
}

fn hash_of(parts: &[&str]) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// The messages of one frame of `tshark -T json` output (none when it has no address).
pub fn messages_of_frame(frame: &Value) -> Vec<Message> {
    let layers = &frame["_source"]["layers"];
    let Some(at) = text(&layers["frame"], "frame.time_epoch").and_then(Nanos::parse) else {
        return Vec::new();
    };
    // The innermost IP header: the last of several (a tunnel).
    let addrs = |proto: &str| {
        let l = each(layers, proto).pop()?;
        let src: IpAddr = text(l, &format!("{proto}.src"))?.parse().ok()?;
        let dst: IpAddr = text(l, &format!("{proto}.dst"))?.parse().ok()?;
        Some((src, dst))
    };
    let Some((src, dst)) = addrs("ipv6").or_else(|| addrs("ip")) else {
        return Vec::new();
    };
    let ports = ["udp", "tcp", "sctp"]
        .iter()
        .find_map(|p| {
            let l = each(layers, p).pop()?;
            Some(format!(
                "{p} {} {}",
                text(l, &format!("{p}.srcport"))?,
                text(l, &format!("{p}.dstport"))?
            ))
        })
        .unwrap_or_default();
    let (src_s, dst_s) = (src.to_string(), dst.to_string());
    let mut out = Vec::new();
    let mut push = |what: What, identity: &[&str]| {
        let mut parts = vec![src_s.as_str(), dst_s.as_str(), ports.as_str()];
        parts.extend_from_slice(identity);
        out.push(Message {
            at,
            src,
            dst,
            what,
            copy_key: hash_of(&parts),
        });
    };
    for sip in each(layers, "sip") {
        let head = text(sip, "sip.Request-Line")
            .or_else(|| text(sip, "sip.Status-Line"))
            .unwrap_or("");
        let headers = text(sip, "sip.msg_hdr").unwrap_or("");
        let cseq_method = text(sip, "sip.CSeq.method").map(str::to_owned);
        let what = if let Some(method) = text(sip, "sip.Method") {
            What::SipRequest {
                method: method.to_owned(),
                cseq: number(sip, "sip.CSeq.seq"),
            }
        } else if let Some(status) = number::<u16>(sip, "sip.Status-Code") {
            // "SIP/2.0 401 Unauthorized" → "Unauthorized".
            let reason = head.splitn(3, ' ').nth(2).unwrap_or("").trim().to_owned();
            What::SipResponse {
                status,
                reason,
                method: cseq_method,
            }
        } else {
            continue;
        };
        push(what, &["sip", head, headers]);
    }
    for d in each(layers, "diameter") {
        let Some(command) = number::<u32>(d, "diameter.cmd.code") else {
            continue;
        };
        let request = flag(d, "diameter.flags.request");
        let result = number(d, "diameter.Experimental-Result-Code")
            .or_else(|| number(d, "diameter.Result-Code"));
        let hbh = text(d, "diameter.hopbyhopid").unwrap_or("");
        let e2e = text(d, "diameter.endtoendid").unwrap_or("");
        let (c, r) = (command.to_string(), request.to_string());
        push(
            What::Diameter {
                command,
                request,
                result,
            },
            &["diameter", c.as_str(), r.as_str(), hbh, e2e],
        );
    }
    for dns in each(layers, "dns") {
        let name = text(dns, "dns.qry.name").unwrap_or("").to_owned();
        let qtype = number(dns, "dns.qry.type").unwrap_or(0);
        let response = flag(dns, "dns.flags.response");
        let id = text(dns, "dns.id").unwrap_or("").to_owned();
        let what = if response {
            What::DnsAnswer {
                qtype,
                name: name.clone(),
                rcode: number(dns, "dns.flags.rcode").unwrap_or(0),
                answers: dns_answers(dns),
            }
        } else {
            What::DnsQuery {
                qtype,
                name: name.clone(),
            }
        };
        let r = response.to_string();
        push(what, &["dns", id.as_str(), name.as_str(), r.as_str()]);
    }
    out
}

/// The data of a DNS response's answer records.
fn dns_answers(dns: &Value) -> Vec<String> {
    let Some(Value::Object(answers)) = dns.get("Answers") else {
        return Vec::new();
    };
    let records = answers.values().flat_map(|v| match v {
        Value::Array(a) => a.iter().collect::<Vec<_>>(),
        v => vec![v],
    });
    records
        .filter_map(|r| {
            if let Some(target) = text(r, "dns.srv.target") {
                return Some(match text(r, "dns.srv.port") {
                    Some(port) => format!("{target}:{port}"),
                    None => target.to_owned(),
                });
            }
            [
                "dns.a",
                "dns.aaaa",
                "dns.naptr.replacement",
                "dns.cname",
                "dns.ptr.domain_name",
            ]
            .iter()
            .find_map(|k| text(r, k))
            .map(str::to_owned)
        })
        .collect()
}

/// Names for addresses.
#[derive(Clone, Debug, Default)]
pub struct Names(pub HashMap<IpAddr, String>);

impl Names {
    /// The one-host lab's addresses.
    pub fn lab() -> Names {
        Names(
            LAB_NAMES
                .iter()
                .filter_map(|(a, n)| Some((a.parse().ok()?, (*n).to_owned())))
                .collect(),
        )
    }

    fn of(&self, addr: IpAddr) -> String {
        self.0
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| addr.to_string())
    }
}

/// A column: one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub addr: IpAddr,
    pub name: String,
}

/// An arrow between two columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrow {
    pub from: usize,
    pub to: usize,
    /// Since the first message.
    pub after: Nanos,
    pub label: String,
    pub kind: Kind,
}

/// Which protocol an arrow carries (its colour in the SVG).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sip,
    Diameter,
    Dns,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sip => "sip",
            Kind::Diameter => "diameter",
            Kind::Dns => "dns",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Kind::Sip => "#1f3b73",
            Kind::Diameter => "#a33b20",
            Kind::Dns => "#2e7d32",
        }
    }
}

/// The ladder: columns and arrows, ready to draw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ladder {
    pub columns: Vec<Column>,
    pub arrows: Vec<Arrow>,
}

impl Ladder {
    /// The ladder of `messages` (in time order, each once: see [`merge`]).
    pub fn new(messages: &[Message], names: &Names) -> Ladder {
        let mut order: Vec<IpAddr> = Vec::new();
        for m in messages {
            for a in [m.src, m.dst] {
                if !order.contains(&a) {
                    order.push(a);
                }
            }
        }
        let mut columns: Vec<Column> = order
            .iter()
            .map(|&addr| Column {
                addr,
                name: names.of(addr),
            })
            .collect();
        // The places the roles took by first appearance, refilled in the figures' order.
        let rank = |c: &Column| ROLES.iter().position(|r| *r == c.name);
        let slots: Vec<usize> = (0..columns.len())
            .filter(|&i| rank(&columns[i]).is_some())
            .collect();
        let mut roles: Vec<Column> = slots.iter().map(|&i| columns[i].clone()).collect();
        roles.sort_by_key(rank);
        for (slot, c) in slots.into_iter().zip(roles) {
            columns[slot] = c;
        }
        let index = |a: IpAddr| columns.iter().position(|c| c.addr == a).unwrap_or(0);
        let start = messages.first().map_or(Nanos(0), |m| m.at);
        let arrows = messages
            .iter()
            .map(|m| Arrow {
                from: index(m.src),
                to: index(m.dst),
                after: Nanos(m.at.0.saturating_sub(start.0)),
                label: m.what.label(),
                kind: match m.what {
                    What::SipRequest { .. } | What::SipResponse { .. } => Kind::Sip,
                    What::Diameter { .. } => Kind::Diameter,
                    What::DnsQuery { .. } | What::DnsAnswer { .. } => Kind::Dns,
                },
            })
            .collect();
        Ladder { columns, arrows }
    }

    /// Mermaid identifiers for the columns (a name such as `P-CSCF` or an address is not
    /// one: Mermaid reads `-` as part of an arrow), each shown with its name.
    fn mermaid_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for c in &self.columns {
            let mut id: String = c
                .name
                .chars()
                .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
                .collect();
            if !id.starts_with(|ch: char| ch.is_ascii_alphabetic()) {
                id.insert(0, 'n');
            }
            let base = id.clone();
            let mut n = 2;
            while ids.contains(&id) {
                id = format!("{base}_{n}");
                n += 1;
            }
            ids.push(id);
        }
        ids
    }

    /// A Mermaid `sequenceDiagram`.
    pub fn mermaid(&self) -> String {
        let ids = self.mermaid_ids();
        let mut s = String::from("sequenceDiagram\n");
        for (id, c) in ids.iter().zip(&self.columns) {
            if *id == c.name {
                let _ = writeln!(s, "    participant {id}");
            } else {
                let _ = writeln!(s, "    participant {id} as {}", mermaid_text(&c.name));
            }
        }
        for a in &self.arrows {
            let _ = writeln!(
                s,
                "    {}->>{}: {}",
                ids[a.from],
                ids[a.to],
                mermaid_text(&a.label)
            );
        }
        s
    }

    /// A self-contained SVG: a header and a lifeline per column, an arrow per message with
    /// its label above it and its time (seconds since the first message) on the left.
    pub fn svg(&self) -> String {
        const LEFT: usize = 70;
        // Columns wide enough for every label over the columns its arrow spans (about 7
        // pixels a character at 12 px), 170 at least.
        let col = self
            .arrows
            .iter()
            .map(|a| (a.label.chars().count() * 7 + 20) / a.from.abs_diff(a.to).max(1))
            .fold(170, usize::max);
        const TOP: usize = 80;
        const ROW: usize = 30;
        let x = |i: usize| LEFT + col / 2 + i * col;
        let width = LEFT + col * self.columns.len().max(1) + 10;
        let height = TOP + ROW * self.arrows.len() + 20;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
        );
        s.push_str("<defs>");
        for kind in [Kind::Sip, Kind::Diameter, Kind::Dns] {
            let _ = write!(
                s,
                r#"<marker id="head-{}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto"><polygon points="0,0 10,5 0,10" fill="{}"/></marker>"#,
                kind.name(),
                kind.colour()
            );
        }
        s.push_str("</defs>\n");
        let _ = writeln!(
            s,
            r##"<rect width="{width}" height="{height}" fill="#ffffff"/>"##
        );
        for (i, c) in self.columns.iter().enumerate() {
            let cx = x(i);
            let _ = writeln!(
                s,
                r##"<line class="life" x1="{cx}" y1="45" x2="{cx}" y2="{}" stroke="#999999" stroke-dasharray="4 4"/>"##,
                height - 10
            );
            let _ = writeln!(
                s,
                r##"<rect class="head" x="{}" y="10" width="{}" height="35" rx="4" fill="#eef2f8" stroke="#44546a"/>"##,
                cx - col / 2 + 10,
                col - 20
            );
            let _ = writeln!(
                s,
                r#"<text x="{cx}" y="26" text-anchor="middle" font-weight="bold">{}</text>"#,
                xml_escape(&c.name)
            );
            // The address under the name, unless the name is the address.
            let addr = c.addr.to_string();
            if addr != c.name {
                let _ = writeln!(
                    s,
                    r##"<text x="{cx}" y="40" text-anchor="middle" font-size="10" fill="#555555">{}</text>"##,
                    xml_escape(&addr)
                );
            }
        }
        for (n, a) in self.arrows.iter().enumerate() {
            let y = TOP + ROW * n;
            let (colour, head) = (a.kind.colour(), a.kind.name());
            let (x1, x2) = (x(a.from), x(a.to));
            if x1 == x2 {
                let _ = writeln!(
                    s,
                    r#"<path class="msg" d="M{x1},{} h40 v12 h-38" fill="none" stroke="{colour}" marker-end="url(#head-{head})"/>"#,
                    y - 6
                );
            } else {
                let _ = writeln!(
                    s,
                    r#"<line class="msg" x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{colour}" stroke-width="1.5" marker-end="url(#head-{head})"/>"#
                );
            }
            let mid = if x1 == x2 { x1 + 45 } else { (x1 + x2) / 2 };
            let anchor = if x1 == x2 { "start" } else { "middle" };
            let _ = writeln!(
                s,
                r#"<text class="label" x="{mid}" y="{}" text-anchor="{anchor}" fill="{colour}">{}</text>"#,
                y - 5,
                xml_escape(&a.label)
            );
            let _ = writeln!(
                s,
                r##"<text class="time" x="5" y="{}" font-size="10" fill="#777777">{}.{:03}</text>"##,
                y + 4,
                a.after.0 / 1_000_000_000,
                a.after.0 % 1_000_000_000 / 1_000_000
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// Text Mermaid shows as it is: `;` ends a statement and `#` starts an entity code.
fn mermaid_text(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ';' => ',',
            '#' | '\n' | '\r' => ' ',
            c => c,
        })
        .collect()
}

/// XML text and attribute escaping (quick-xml's), control characters (not allowed in XML
/// 1.0) made spaces first.
fn xml_escape(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    quick_xml::escape::escape(clean.as_str()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_text_is_escaped_and_control_characters_are_spaces() {
        assert_eq!(
            xml_escape("a<b & 'c' \"d\">\u{1}e"),
            "a&lt;b &amp; &apos;c&apos; &quot;d&quot;&gt; e"
        );
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn msg(ms: u64, src: &str, dst: &str, what: What) -> Message {
        let key = hash_of(&[src, dst, &format!("{what:?}")]);
        Message {
            at: Nanos(1_700_000_000_000_000_000 + ms * 1_000_000),
            src: ip(src),
            dst: ip(dst),
            what,
            copy_key: key,
        }
    }

    fn req(method: &str, cseq: u32) -> What {
        What::SipRequest {
            method: method.into(),
            cseq: Some(cseq),
        }
    }

    fn resp(status: u16, reason: &str) -> What {
        What::SipResponse {
            status,
            reason: reason.into(),
            method: Some("REGISTER".into()),
        }
    }

    fn dia(command: u32, request: bool, result: Option<u32>) -> What {
        What::Diameter {
            command,
            request,
            result,
        }
    }

    #[test]
    fn labels_name_the_key_fields() {
        assert_eq!(req("REGISTER", 1).label(), "REGISTER (1)");
        assert_eq!(
            resp(401, "Unauthorized").label(),
            "401 Unauthorized (REGISTER)"
        );
        let bare = What::SipResponse {
            status: 200,
            reason: String::new(),
            method: None,
        };
        assert_eq!(bare.label(), "200");
        assert_eq!(dia(300, true, None).label(), "UAR");
        assert_eq!(dia(300, false, Some(2001)).label(), "UAA 2001");
        assert_eq!(dia(303, false, Some(2001)).label(), "MAA 2001");
        assert_eq!(dia(301, true, None).label(), "SAR");
        assert_eq!(dia(302, false, Some(5003)).label(), "LIA 5003");
        assert_eq!(dia(304, true, None).label(), "RTR");
        assert_eq!(dia(305, false, Some(2001)).label(), "PPA 2001");
        assert_eq!(dia(257, true, None).label(), "CER");
        assert_eq!(dia(280, false, Some(2001)).label(), "DWA 2001");
        assert_eq!(dia(316, true, None).label(), "Diameter 316 request");
        let q = What::DnsQuery {
            qtype: 35,
            name: "hims.net".into(),
        };
        assert_eq!(q.label(), "NAPTR? hims.net");
        let a = |rcode, answers: &[&str]| What::DnsAnswer {
            qtype: 33,
            name: "_sip._udp.hims.net".into(),
            rcode,
            answers: answers.iter().map(|s| (*s).to_owned()).collect(),
        };
        assert_eq!(
            a(0, &["icscf1.hims.net:5060"]).label(),
            "SRV _sip._udp.hims.net: icscf1.hims.net:5060"
        );
        assert_eq!(a(3, &[]).label(), "SRV _sip._udp.hims.net: NXDOMAIN");
        assert_eq!(a(0, &[]).label(), "SRV _sip._udp.hims.net: no answer");
        assert_eq!(
            a(0, &["a", "b", "c", "d"]).label(),
            "SRV _sip._udp.hims.net: a, b (+2 more)"
        );
        assert!(dia(257, false, Some(2001)).is_peer_housekeeping());
        assert!(dia(282, true, None).is_peer_housekeeping());
        assert!(!dia(300, true, None).is_peer_housekeeping());
    }

    #[test]
    fn time_epoch_parses_to_the_nanosecond() {
        assert_eq!(
            Nanos::parse("1700000000.004000001"),
            Some(Nanos(1_700_000_000_004_000_001))
        );
        assert_eq!(Nanos::parse("12.5"), Some(Nanos(12_500_000_000)));
        assert_eq!(Nanos::parse("12"), Some(Nanos(12_000_000_000)));
        assert_eq!(Nanos::parse("x.1"), None);
        assert_eq!(Nanos::parse("1.x"), None);
    }

    #[test]
    fn names_parse_and_reject() {
        assert_eq!(
            parse_name("10.10.2.2=P-CSCF").unwrap(),
            (ip("10.10.2.2"), "P-CSCF".into())
        );
        assert_eq!(
            parse_name("fd00:10:1::2=UE").unwrap(),
            (ip("fd00:10:1::2"), "UE".into())
        );
        assert!(parse_name("10.10.2.2").unwrap_err().contains("ADDR=NAME"));
        assert!(parse_name("pcscf=P").unwrap_err().contains("not an IP"));
        assert!(parse_name("10.0.0.1=").unwrap_err().contains("empty"));
    }

    /// Copies of one message (the `any` interface, two captures) merge into one arrow; a
    /// retransmission later stays.
    #[test]
    fn merge_keeps_time_order_and_one_copy() {
        let a = msg(0, "10.0.0.1", "10.0.0.2", req("REGISTER", 1));
        let mut copy = a.clone();
        copy.at.0 += 50_000; // 50 µs later, in the other capture
        let b = msg(1, "10.0.0.2", "10.0.0.1", resp(401, "Unauthorized"));
        let mut retransmit = a.clone();
        retransmit.at.0 += 500_000_000;
        let merged = merge(vec![b.clone(), copy, retransmit.clone(), a.clone()]);
        assert_eq!(merged, [a, b, retransmit]);
    }

    fn registration() -> Vec<Message> {
        let (ue, p, dns, i, s, h) = (
            "10.10.1.2",
            "10.10.2.2",
            "10.10.3.2",
            "10.10.4.2",
            "10.10.4.3",
            "10.10.4.4",
        );
        vec![
            msg(0, ue, p, req("REGISTER", 1)),
            msg(
                1,
                p,
                dns,
                What::DnsQuery {
                    qtype: 35,
                    name: "hims.net".into(),
                },
            ),
            msg(2, p, i, req("REGISTER", 1)),
            msg(3, i, h, dia(300, true, None)),
            msg(4, h, i, dia(300, false, Some(2001))),
            msg(5, i, s, req("REGISTER", 1)),
            msg(6, s, h, dia(303, true, None)),
            msg(7, h, s, dia(303, false, Some(2001))),
            msg(8, s, i, resp(401, "Unauthorized")),
        ]
    }

    fn lab_names() -> Names {
        let mut n = Names::default();
        for (a, name) in [
            ("10.10.1.2", "UE"),
            ("10.10.2.2", "P-CSCF"),
            ("10.10.3.2", "DNS"),
            ("10.10.4.2", "I-CSCF"),
            ("10.10.4.3", "S-CSCF"),
            ("10.10.4.4", "HSS"),
        ] {
            n.0.insert(ip(a), name.into());
        }
        n
    }

    #[test]
    fn mermaid_draws_the_registration() {
        let ladder = Ladder::new(&registration(), &lab_names());
        // HSS appears before S-CSCF, but the figures' order puts it last.
        let names: Vec<&str> = ladder.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ROLES);
        assert_eq!(
            ladder.mermaid(),
            "sequenceDiagram
    participant UE
    participant P_CSCF as P-CSCF
    participant DNS
    participant I_CSCF as I-CSCF
    participant S_CSCF as S-CSCF
    participant HSS
    UE->>P_CSCF: REGISTER (1)
    P_CSCF->>DNS: NAPTR? hims.net
    P_CSCF->>I_CSCF: REGISTER (1)
    I_CSCF->>HSS: UAR
    HSS->>I_CSCF: UAA 2001
    I_CSCF->>S_CSCF: REGISTER (1)
    S_CSCF->>HSS: MAR
    HSS->>S_CSCF: MAA 2001
    S_CSCF->>I_CSCF: 401 Unauthorized (REGISTER)
"
        );
    }

    /// Unnamed columns keep their place of first appearance and get identifiers Mermaid
    /// accepts; the named roles among them take the figures' order.
    #[test]
    fn unnamed_columns_keep_first_appearance() {
        let mut names = Names::lab();
        names.0.insert(ip("127.0.0.1"), "UE".into());
        let m = vec![
            msg(0, "127.0.0.99", "127.0.0.40", dia(300, true, None)),
            msg(1, "127.0.0.40", "127.0.0.99", dia(300, false, Some(2001))),
            msg(2, "::1", "127.0.0.10", req("REGISTER", 7)),
            msg(3, "127.0.0.1", "127.0.0.10", req("MESSAGE", 1)),
        ];
        let ladder = Ladder::new(&m, &names);
        let cols: Vec<&str> = ladder.columns.iter().map(|c| c.name.as_str()).collect();
        // First appearance: .99, HSS, ::1, P-CSCF, UE; UE, P-CSCF and HSS are reordered
        // among their places.
        assert_eq!(cols, ["127.0.0.99", "UE", "::1", "P-CSCF", "HSS"]);
        let text = ladder.mermaid();
        assert!(
            text.contains("participant n127_0_0_99 as 127.0.0.99\n"),
            "{text}"
        );
        assert!(text.contains("participant n__1 as ::1\n"), "{text}");
        assert!(text.contains("    n__1->>P_CSCF: REGISTER (7)\n"), "{text}");
        assert!(text.contains("    UE->>P_CSCF: MESSAGE (1)\n"), "{text}");
    }

    #[test]
    fn mermaid_ids_and_labels_stay_in_its_grammar() {
        let mut names = Names::default();
        names.0.insert(ip("10.0.0.1"), "a-b".into());
        names.0.insert(ip("10.0.0.2"), "a.b".into());
        let m = vec![msg(
            0,
            "10.0.0.1",
            "10.0.0.2",
            What::SipResponse {
                status: 500,
                reason: "Bad; #1".into(),
                method: None,
            },
        )];
        let text = Ladder::new(&m, &names).mermaid();
        assert!(text.contains("participant a_b as a-b\n"), "{text}");
        assert!(text.contains("participant a_b_2 as a.b\n"), "{text}");
        assert!(text.contains("a_b->>a_b_2: 500 Bad,  1\n"), "{text}");
    }

    #[test]
    fn svg_has_a_column_per_address_and_an_arrow_per_message() {
        let mut m = registration();
        m.push(msg(
            9,
            "10.10.4.3",
            "10.10.4.3",
            What::SipRequest {
                method: "A<B&C".into(),
                cseq: None,
            },
        ));
        let svg = Ladder::new(&m, &lab_names()).svg();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("class=\"msg\"").count(), m.len());
        assert_eq!(svg.matches("class=\"life\"").count(), 6);
        assert_eq!(svg.matches("class=\"label\"").count(), m.len());
        assert!(svg.contains(">UAA 2001</text>"));
        assert!(svg.contains(">A&lt;B&amp;C</text>"));
        assert!(svg.contains(">P-CSCF</text>"));
        assert!(
            svg.contains(">10.10.2.2</text>"),
            "the address under its name"
        );
        assert!(svg.contains(">0.008</text>"), "the 401's time");
    }

    /// A frame as `tshark -T json --no-duplicate-keys` writes it (trimmed): a TCP segment
    /// with a UAA (Experimental-Result) and an MAA (Result-Code).
    #[test]
    fn frames_parse_from_tshark_json() {
        let frame: Value = serde_json::from_str(
            r#"{"_source": {"layers": {
                "frame": {"frame.time_epoch": "1700000000.004000000"},
                "ip": {"ip.src": "10.10.4.4", "ip.dst": "10.10.4.2"},
                "tcp": {"tcp.srcport": "3868", "tcp.dstport": "40000"},
                "diameter": [
                  {"diameter.flags_tree": {"diameter.flags.request": "0"},
                   "diameter.cmd.code": "300", "diameter.hopbyhopid": "0x00000001",
                   "diameter.avp_tree": [{"diameter.Session-Id": "s;1"},
                     {"diameter.Experimental-Result_tree": {"diameter.avp_tree": [
                       {"diameter.Vendor-Id": "10415"},
                       {"diameter.Experimental-Result-Code": "2001"}]}}]},
                  {"diameter.flags_tree": {"diameter.flags.request": "0"},
                   "diameter.cmd.code": "303", "diameter.hopbyhopid": "0x00000002",
                   "diameter.avp_tree": [{"diameter.Result-Code": "5001"}]}
                ]}}}"#,
        )
        .unwrap();
        let m = messages_of_frame(&frame);
        let labels: Vec<String> = m.iter().map(|m| m.what.label()).collect();
        assert_eq!(labels, ["UAA 2001", "MAA 5001"]);
        assert_eq!(m[0].src, ip("10.10.4.4"));
        assert_ne!(m[0].copy_key, m[1].copy_key);

        let frame: Value = serde_json::from_str(
            r#"{"_source": {"layers": {
                "frame": {"frame.time_epoch": "1700000000.000000000"},
                "ipv6": {"ipv6.src": "fd00::1", "ipv6.dst": "fd00::2"},
                "udp": {"udp.srcport": "5060", "udp.dstport": "5060"},
                "sip": {"sip.Status-Line": "SIP/2.0 401 Unauthorized",
                        "sip.Status-Code": "401",
                        "sip.msg_hdr_tree": {"sip.CSeq_tree": {"sip.CSeq.seq": "1",
                                             "sip.CSeq.method": "REGISTER"}}}}}}"#,
        )
        .unwrap();
        let m = messages_of_frame(&frame);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].what.label(), "401 Unauthorized (REGISTER)");
        assert_eq!(m[0].dst, ip("fd00::2"));

        let frame: Value = serde_json::from_str(
            r#"{"_source": {"layers": {
                "frame": {"frame.time_epoch": "1700000000.002000000"},
                "ip": {"ip.src": "10.10.3.2", "ip.dst": "10.10.2.2"},
                "udp": {"udp.srcport": "53", "udp.dstport": "4000"},
                "dns": {"dns.id": "0x0007",
                  "dns.flags_tree": {"dns.flags.response": "1", "dns.flags.rcode": "0"},
                  "Queries": {"hims.net: type NAPTR, class IN": {"dns.qry.name": "hims.net", "dns.qry.type": "35"}},
                  "Answers": {"hims.net: type NAPTR, class IN, order 10": {
                     "dns.resp.type": "35", "dns.naptr.replacement": "_sip._udp.hims.net"}}}}}}"#,
        )
        .unwrap();
        let m = messages_of_frame(&frame);
        assert_eq!(m[0].what.label(), "NAPTR hims.net: _sip._udp.hims.net");
        // No time or no address: nothing.
        assert!(messages_of_frame(&serde_json::json!({"_source": {"layers": {}}})).is_empty());
    }
}
