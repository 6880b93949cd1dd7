//! One Diameter connection over TCP, in either role: the one loop that pumps the sans-io
//! [`ims_diameter::peer::Peer`] for the CSCFs' client ([`super::client`]) and for a server's
//! accepted connections ([`super::server`]). It writes what the peer queues, reads what
//! arrives, fires the peer's timers, sends requests handed to it as [`Cmd::Request`] (their
//! answers go back on each request's oneshot, matched by the peer's handle), and tells its
//! [`Owner`] when the peer comes up or goes down and when the remote peer sends a request.
//!
//! Every request handed to it ends: answered, failed by the peer (its request timeout, or
//! the connection going down), or failed when the loop ends. A write the remote peer does
//! not take within `write_limit` (a peer stopped, not dead, with our socket buffer full)
//! ends the connection, rather than the loop waiting on it with every timer stopped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ims_diameter::dict::DisconnectCause;
use ims_diameter::peer::{Event, Peer, RequestFailure, State};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::RequestError;

/// Where a request's outcome goes.
pub(crate) type Reply = oneshot::Sender<Result<Vec<u8>, RequestError>>;

/// What a connection is asked to do from outside its loop.
pub(crate) enum Cmd {
    /// Send this request (ids filled in by the peer); the outcome goes back on the sender.
    Request(Vec<u8>, Reply),
    /// Send this answer to a request the remote peer sent (one answered in a task of its
    /// own).
    Answer(Vec<u8>),
}

/// A command that came while there is no connection: a request fails at once (the link is
/// known down), an answer has nowhere to go.
pub(crate) fn refuse(cmd: Cmd, remote: SocketAddr) {
    if let Cmd::Request(_, w) = cmd {
        let _ = w.send(Err(RequestError::NotOpen(remote)));
    }
}

/// What the connection tells whoever runs it.
pub(crate) trait Owner {
    /// The capabilities exchange is done: the peer `host` of `realm` is Open.
    fn up(&mut self, peer: &Peer, host: String, realm: String);
    /// The connection is no longer Open (the peer has logged why). Called once after each
    /// [`Owner::up`], at the latest when the loop ends.
    fn down(&mut self);
    /// A request from the remote peer: answer it now with [`Peer::send_answer`], or later
    /// with [`Cmd::Answer`].
    fn request(&mut self, peer: &mut Peer, bytes: Vec<u8>);
    /// After each round of events, before waiting again.
    fn settled(&mut self, _peer: &Peer) {}
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The connection closed; commands may still come.
    Closed,
    /// Every command sender is gone (after a DPR, if the peer was Open).
    NoCommands,
}

/// Runs one connection until it closes: `peer` has just been told the transport is up by
/// the caller or is told here (`handle_connected`). `stop` turning true (or its sender
/// going) sends DPR REBOOTING; so does the end of `cmds`.
pub(crate) async fn run(
    mut stream: TcpStream,
    remote: SocketAddr,
    peer: &mut Peer,
    cmds: &mut mpsc::Receiver<Cmd>,
    mut stop: Option<watch::Receiver<bool>>,
    write_limit: Duration,
    owner: &mut impl Owner,
) -> Ended {
    let _ = stream.set_nodelay(true);
    peer.handle_connected(Instant::now());
    let mut waiting: HashMap<u64, Reply> = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut up = false;
    let mut cmds_open = true;
    let mut stopping = false;
    loop {
        // Write what the peer queued, then act on its events (answering a request inline
        // queues a transmit: write it before waiting again).
        loop {
            flush(&mut stream, peer, write_limit, remote).await;
            let Some(ev) = peer.poll_event() else { break };
            match ev {
                Event::Up { host, realm } => {
                    up = true;
                    owner.up(peer, host, realm);
                }
                Event::Down(_) => {
                    if std::mem::take(&mut up) {
                        owner.down();
                    }
                }
                Event::Request(bytes) => owner.request(peer, bytes),
                Event::Answer { handle, bytes } => {
                    if let Some(w) = waiting.remove(&handle) {
                        let _ = w.send(Ok(bytes));
                    }
                }
                Event::RequestFailed { handle, reason } => {
                    // Down under the request: known down, like one not open (503 with
                    // Retry-After at a CSCF, not a timeout's 504).
                    let e = match reason {
                        RequestFailure::ConnectionDown => RequestError::NotOpen(remote),
                        RequestFailure::Timeout => RequestError::NoAnswer(remote),
                    };
                    if let Some(w) = waiting.remove(&handle) {
                        let _ = w.send(Err(e));
                    }
                }
                Event::Close | Event::Reconnect => {}
            }
        }
        owner.settled(peer);
        if peer.state() == State::Closed {
            let _ = tokio::time::timeout(write_limit, stream.shutdown()).await;
            break;
        }
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => peer.handle_disconnected(Instant::now()),
                Ok(n) => peer.handle_bytes(Instant::now(), &buf[..n]),
            },
            cmd = cmds.recv(), if cmds_open => match cmd {
                None => {
                    cmds_open = false;
                    peer.disconnect(Instant::now(), DisconnectCause::Rebooting);
                }
                Some(Cmd::Answer(b)) => peer.send_answer(b),
                Some(Cmd::Request(b, w)) => match peer.send_request(Instant::now(), b) {
                    Ok(h) => {
                        waiting.insert(h, w);
                    }
                    Err(e) => {
                        tracing::debug!(%remote, error = %e, "Diameter request not sent");
                        let _ = w.send(Err(RequestError::NotOpen(remote)));
                    }
                },
            },
            () = sleep_until(peer.poll_timeout()) => peer.handle_timeout(Instant::now()),
            r = changed(&mut stop), if !stopping => {
                stopping = true;
                if r {
                    tracing::info!(%remote, "stopping: DPR to the Diameter peer");
                    peer.disconnect(Instant::now(), DisconnectCause::Rebooting);
                }
            }
        }
    }
    for (_, w) in waiting.drain() {
        let _ = w.send(Err(RequestError::NotOpen(remote)));
    }
    if up {
        owner.down();
    }
    if cmds_open {
        Ended::Closed
    } else {
        Ended::NoCommands
    }
}

/// Writes every transmit the peer queued; on failure (or `limit` without progress) the
/// transport is taken as gone and the rest dropped.
async fn flush(stream: &mut TcpStream, peer: &mut Peer, limit: Duration, remote: SocketAddr) {
    while let Some(b) = peer.poll_transmit() {
        let failed = match tokio::time::timeout(limit, stream.write_all(&b)).await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => {
                tracing::info!(%remote, error = %e, "Diameter write failed");
                true
            }
            Err(_) => {
                tracing::warn!(%remote, ?limit, "the Diameter peer has not read our bytes for the request timeout: closing");
                true
            }
        };
        if failed {
            peer.handle_disconnected(Instant::now());
            while peer.poll_transmit().is_some() {}
            return;
        }
    }
}

/// True once `stop` says stop (or its sender is gone); never with no `stop`.
async fn changed(stop: &mut Option<watch::Receiver<bool>>) -> bool {
    let Some(rx) = stop else {
        return std::future::pending().await;
    };
    let _ = rx.wait_for(|s| *s).await;
    true
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
