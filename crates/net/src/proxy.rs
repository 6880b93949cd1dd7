//! The stateful proxy core for INVITE (RFC 3261 §16.7–16.10), over [`SipEndpoint`]: one
//! server transaction upstream (the endpoint already answered `100 Trying`), one client
//! transaction per branch, forked in parallel.
//!
//! - Provisional responses (101–199) of every branch go upstream at once.
//! - The first 2xx goes upstream and every other branch is CANCELled; a later 2xx (another
//!   branch's, or a retransmission) goes upstream too, as §16.7 item 5 requires: the caller
//!   ACKs and hangs up what it did not want.
//! - A 6xx CANCELs the other branches and is the answer unless a 2xx crossed it.
//! - Otherwise, when every branch has ended, the best final response goes upstream
//!   (§16.7 item 6: a 6xx, else the lowest status class; a downstream 503 becomes 500); a
//!   branch that never answered counts as 408, one that could not be sent as 503.
//! - A CANCEL from upstream (the endpoint answered it 200) CANCELs every branch still
//!   pending; their 487 then goes upstream as the answer. A branch that has sent nothing
//!   but 100 Trying is counted as a 487 at once (close to what Kamailio's tm does for
//!   branches without a reply), so that a dead contact behind a next hop that said 100 does
//!   not hold the caller for Timer B; its CANCEL still leaves (at once after a 100, else
//!   when a provisional comes), and a 2xx that crosses it still goes upstream by Via.
//!
//! ACKs are hop by hop for non-2xx (the endpoint's transactions send and absorb them) and
//! end to end for 2xx (the application routes them as requests of their own).

use std::net::SocketAddr;

use ims_sip::Message;
use tokio::sync::mpsc;

use crate::dns::Target;
use crate::endpoint::{ClientError, ServerRequest, SipEndpoint, Unheard, pop_own_via};

/// One branch of a proxied INVITE.
#[derive(Debug)]
pub struct ProxyBranch {
    /// The INVITE as it leaves (Request-URI and Route set; our Via is added on sending).
    pub message: Message,
    /// Where it goes.
    pub target: Target,
    /// Our address it leaves from (the P-CSCF's protected port toward an IPsec UE).
    pub local: Option<SocketAddr>,
    /// `target` is a UE's registered flow: its transport is kept whatever the INVITE's size
    /// ([`SipEndpoint::send_request_to_flow`]).
    pub flow: bool,
    /// Counted until the next hop answers anything (see [`Unheard`]).
    pub unheard: Option<Unheard>,
}

/// How a branch ended, for choosing the best answer.
enum Ended {
    /// Its final response (our Via popped).
    Response(Message),
    /// No final response: the status we answer for it.
    Failed(u16, &'static str),
}

impl Ended {
    fn status(&self) -> u16 {
        match self {
            Ended::Response(r) => r.status().unwrap_or(500),
            Ended::Failed(code, _) => *code,
        }
    }
}

/// The rank of a final status among a fork's answers (RFC 3261 §16.7 item 6): lower is
/// better (a 6xx, else the lowest status). Shared by every forking of the CSCFs.
pub fn rank(status: u16) -> (u8, u16) {
    match status {
        600..=699 => (0, status),
        s => (1, s),
    }
}

/// A downstream 503 is not ours to pass on (§16.7 item 6): the caller would think *we* are
/// busy. It goes upstream as 500.
pub fn not_our_503(resp: &mut Message) -> Result<(), ims_sip::Error> {
    if resp.status() == Some(503) {
        resp.set_status(500, "Server Internal Error (next hop unavailable)")?;
    }
    Ok(())
}

/// Keeps `e` as the answer when it ranks better than the one kept.
fn keep_best(best: &mut Option<Ended>, e: Ended) {
    if best
        .as_ref()
        .is_none_or(|b| rank(e.status()) < rank(b.status()))
    {
        *best = Some(e);
    }
}

/// Proxies the INVITE `req` to `branches` and answers it upstream (see the module docs).
/// `tag` is the To tag of the answers we make ourselves.
pub async fn proxy_invite(
    ep: &SipEndpoint,
    req: &ServerRequest,
    branches: Vec<ProxyBranch>,
    tag: &str,
) {
    let (tx, mut rx) = mpsc::channel(32);
    let mut handles = Vec::with_capacity(branches.len());
    let mut answered_at_all = vec![false; branches.len()];
    let mut best: Option<Ended> = None;
    let mut pending = 0usize;
    for (id, b) in branches.into_iter().enumerate() {
        let to = b.target.addr;
        match ep
            .send_invite(
                b.message,
                b.target,
                b.local,
                b.flow,
                (id, tx.clone()),
                b.unheard,
            )
            .await
        {
            Ok(h) => {
                handles.push(Some(h));
                pending += 1;
            }
            Err(e) => {
                tracing::info!(%to, error = %e, "INVITE branch could not be sent");
                handles.push(None);
                keep_best(&mut best, Ended::Failed(503, "Service Unavailable"));
            }
        }
    }
    drop(tx);
    let mut cancel = req.cancellation();
    let mut cancelled = false;
    // A 2xx went upstream: that is the answer.
    let mut answered = false;
    let cancel_all = |handles: &mut Vec<Option<crate::endpoint::InviteBranch>>| {
        for h in handles.iter().flatten() {
            h.cancel();
        }
    };
    while pending > 0 {
        tokio::select! {
            report = rx.recv() => {
                let Some((id, outcome)) = report else { break };
                match outcome {
                    Ok(mut resp) => {
                        let status = resp.status().unwrap_or(500);
                        if pop_own_via(&mut resp).is_err() {
                            continue;
                        }
                        if let Some(a) = answered_at_all.get_mut(id) {
                            *a = true;
                        }
                        if status < 200 {
                            if !answered {
                                ep.respond(req, resp).await;
                            }
                            continue;
                        }
                        if let Some(h) = handles.get_mut(id).and_then(Option::take) {
                            drop(h);
                            pending -= 1;
                        }
                        if (200..300).contains(&status) {
                            ep.respond(req, resp).await;
                            if !answered {
                                answered = true;
                                cancel_all(&mut handles);
                            }
                            continue;
                        }
                        if status >= 600 && !answered {
                            cancel_all(&mut handles);
                        }
                        keep_best(&mut best, Ended::Response(resp));
                    }
                    Err(e) => {
                        if handles.get_mut(id).and_then(Option::take).is_some() {
                            pending -= 1;
                        }
                        let ended = match e {
                            ClientError::Timeout(to) => {
                                tracing::info!(%to, "INVITE branch unanswered: 408");
                                Ended::Failed(408, "Request Timeout")
                            }
                            e => {
                                tracing::info!(error = %e, "INVITE branch failed: 503");
                                Ended::Failed(503, "Service Unavailable")
                            }
                        };
                        keep_best(&mut best, ended);
                    }
                }
            }
            () = cancelled_signal(&mut cancel), if !cancelled => {
                cancelled = true;
                tracing::debug!("INVITE cancelled upstream: CANCEL to every branch");
                cancel_all(&mut handles);
                for (h, heard) in handles.iter_mut().zip(&answered_at_all) {
                    if !heard && h.take().is_some() {
                        pending -= 1;
                        keep_best(&mut best, Ended::Failed(487, "Request Terminated"));
                    }
                }
            }
        }
    }
    if answered {
        return;
    }
    match best {
        Some(Ended::Response(mut resp)) => {
            let _ = not_our_503(&mut resp);
            ep.respond(req, resp).await;
        }
        Some(Ended::Failed(code, reason)) => {
            let code = if code == 503 { 500 } else { code };
            ep.reply(req, code, reason, tag).await;
        }
        None => ep.reply(req, 480, "Temporarily Unavailable", tag).await,
    }
}

/// Resolves once the INVITE is cancelled upstream; never for a request without a
/// cancellation signal (or once the endpoint forgot it).
async fn cancelled_signal(cancel: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    if let Some(rx) = cancel {
        if rx.wait_for(|c| *c).await.is_ok() {
            return;
        }
        *cancel = None;
    }
    std::future::pending().await
}
