//! SIP over UDP and TCP (RFC 3261 §18) for the CSCFs: one [`SipTransport`] binds a UDP socket
//! and a TCP listener on the same address, hands every received message to the application
//! as an [`Incoming`], and sends messages back out.
//!
//! - Handing on: on a channel ([`SipTransport::bind`]), or to a [`Receiver`] called in the
//!   receiving task itself ([`SipTransport::bind_to`]). The endpoint takes the second: a
//!   message then reaches the transaction layer with no hand-off between tasks (each one a
//!   wake-up, often of another thread: the largest cost in the daemons' profiles).
//!
//! - UDP: one datagram is one message ([`ims_sip::Message::parse`]); Content-Length cuts the
//!   body and anything after it is dropped.
//! - TCP: each connection is read by its own task and framed by Content-Length
//!   ([`ims_sip::frame`]); CRLF keepalives are answered per RFC 5626 (a double CRLF gets a
//!   single CRLF back). A framing error (a bad Content-Length, an oversized head) closes the
//!   connection: the stream cannot be resynchronised.
//! - Connection reuse: every TCP connection (accepted or opened) is kept by its remote
//!   address, so a response to a UE goes back on the connection its request came in on
//!   (RFC 3261 §18.2.2), and a request to a next hop reuses an open connection.
//! - Outgoing TCP from our own port ([`SipTransport::bind_connecting_from_port`]): IPsec
//!   selects packets by port (TS 33.203 §7.1), so a UE's connection to the P-CSCF's protected
//!   server port must come from its protected client port, and the P-CSCF's to the UE's
//!   protected server port from its protected client port. The listener and each outgoing
//!   socket share the port with SO_REUSEADDR + SO_REUSEPORT (only there: on a daemon's plain
//!   port, SO_REUSEPORT would let another process of the same user take half its connections).
//! - Outgoing TCP otherwise leaves from our own address (an ephemeral port) when we listen on
//!   a specific one, like our UDP does: the kernel would pick the interface's first address.
//! - UDP receive buffer: [`UDP_RECEIVE_BUFFER`], not the kernel's default (212,992 bytes on
//!   most distributions, about a hundred datagrams once the kernel's bookkeeping is counted).
//!   A daemon's socket takes every UE's and every neighbour's messages, and the default
//!   overflowed whenever a daemon paused for a few tens of milliseconds (the 100,000-UE soak:
//!   some 180 datagrams a second dropped at the P-CSCF and the S-CSCF, each a registration
//!   recovered only by a retransmission 500 ms later, or refused while it was in flight).
//!   Kamailio and SIPp raise theirs the same way. Past `net.core.rmem_max` it takes
//!   `SO_RCVBUFFORCE` (CAP_NET_ADMIN); without it the kernel's ceiling is what we get, said
//!   in one log line at start.
//! - A message that does not parse is dropped with one log line naming the problem (with no
//!   parsable Via there is nobody to answer); whether a parsed request is acceptable
//!   ([`ims_sip::Message::check_request`], 400) is the application's call.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ims_sip::{DEFAULT_MAX_MESSAGE_LEN, Frame, Message, frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

pub use crate::dns::Transport;

/// A received message and where it came from.
#[derive(Debug)]
pub struct Incoming {
    /// The message.
    pub message: Message,
    /// The sender's address (the source of the datagram, or the TCP peer).
    pub source: SocketAddr,
    /// The transport it came on.
    pub transport: Transport,
    /// The local address it arrived at.
    pub local: SocketAddr,
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// This transport is not served here (TLS).
    #[error("SIP over {0:?} is not supported by this transport")]
    Unsupported(Transport),
    /// The socket said no.
    #[error("sending SIP over {transport:?} to {to}: {source}")]
    Io {
        /// Transport.
        transport: Transport,
        /// Destination.
        to: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What a transport made with [`SipTransport::bind_to`] hands each received message to.
/// `receive` is called in the task that read the message (the UDP socket's, or the TCP
/// connection's), which reads nothing more until it returns: it must not block, and
/// whatever may wait (a TCP send, a DNS lookup) goes to a task of its own.
pub trait Receiver: Send + Sync + 'static {
    /// Takes one received message.
    fn receive(&self, inc: Incoming);
}

/// Where received messages go.
#[derive(Clone)]
enum Sink {
    /// A channel: the receiving task waits while it is full.
    Channel(mpsc::Sender<Incoming>),
    /// Called in the receiving task.
    Receiver(Arc<dyn Receiver>),
}

impl Sink {
    async fn deliver(&self, inc: Incoming) {
        match self {
            Sink::Channel(tx) => {
                let _ = tx.send(inc).await;
            }
            Sink::Receiver(r) => r.receive(inc),
        }
    }
}

/// A transport bound by [`SipTransport::bind_to`] that does not read yet: [`Bound::start`]
/// it once its [`Receiver`] can take messages.
pub struct Bound {
    transport: SipTransport,
    tcp: TcpListener,
}

impl Bound {
    /// The transport (it sends already; it receives once started).
    pub fn transport(&self) -> &SipTransport {
        &self.transport
    }

    /// Starts reading UDP and accepting TCP.
    pub fn start(self) -> SipTransport {
        let t = self.transport;
        tokio::spawn(t.clone().udp_loop());
        tokio::spawn(t.clone().accept_loop(self.tcp));
        tracing::info!(local = %t.local, "SIP listening on UDP and TCP");
        t
    }
}

type Conns = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>>;

/// TCP messages handed to a connection's writer task and not yet written (or dropped with a
/// failed connection): what [`SipTransport::flush`] waits for.
#[derive(Default)]
struct Unwritten {
    n: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Unwritten {
    fn add(&self) {
        self.n.fetch_add(1, Ordering::AcqRel);
    }

    fn done(&self, k: usize) {
        if k > 0 && self.n.fetch_sub(k, Ordering::AcqRel) == k {
            self.idle.notify_waiters();
        }
    }
}

/// UDP and TCP on one address. Clone freely: clones share the sockets.
#[derive(Clone)]
pub struct SipTransport {
    udp: Arc<UdpSocket>,
    local: SocketAddr,
    conns: Conns,
    incoming: Sink,
    max_len: usize,
    /// Outgoing TCP connections leave from `local` (see the module docs).
    connect_from_local: bool,
    unwritten: Arc<Unwritten>,
}

impl SipTransport {
    /// Binds UDP and TCP on `addr` (port 0 picks one port free on both) and starts
    /// receiving; received messages arrive on the returned channel.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<(Self, mpsc::Receiver<Incoming>)> {
        Self::bind_inner(addr, false).await
    }

    /// As [`SipTransport::bind`], and TCP connections we open leave from this address and
    /// port too (for IPsec protected ports; see the module docs).
    pub async fn bind_connecting_from_port(
        addr: SocketAddr,
    ) -> std::io::Result<(Self, mpsc::Receiver<Incoming>)> {
        Self::bind_inner(addr, true).await
    }

    async fn bind_inner(
        addr: SocketAddr,
        connect_from_local: bool,
    ) -> std::io::Result<(Self, mpsc::Receiver<Incoming>)> {
        let (tx, rx) = mpsc::channel(4096);
        let bound = Self::bind_sink(addr, connect_from_local, Sink::Channel(tx)).await?;
        Ok((bound.start(), rx))
    }

    /// Binds UDP and TCP on `addr` as [`SipTransport::bind`] (with `connect_from_local`, as
    /// [`SipTransport::bind_connecting_from_port`]), handing every received message to
    /// `receiver` in the task that read it; reading starts with [`Bound::start`].
    pub async fn bind_to(
        addr: SocketAddr,
        connect_from_local: bool,
        receiver: Arc<dyn Receiver>,
    ) -> std::io::Result<Bound> {
        Self::bind_sink(addr, connect_from_local, Sink::Receiver(receiver)).await
    }

    async fn bind_sink(
        addr: SocketAddr,
        connect_from_local: bool,
        incoming: Sink,
    ) -> std::io::Result<Bound> {
        let (udp, tcp) = bind_both(addr, connect_from_local).await?;
        let local = udp.local_addr()?;
        enlarge_receive_buffer(&udp, local);
        let transport = SipTransport {
            udp: Arc::new(udp),
            local,
            conns: Arc::new(Mutex::new(HashMap::new())),
            incoming,
            max_len: DEFAULT_MAX_MESSAGE_LEN,
            connect_from_local,
            unwritten: Arc::default(),
        };
        Ok(Bound { transport, tcp })
    }

    /// Sends one datagram now, without waiting: false when the socket would block or
    /// failed (for retransmissions of a final response, which the next one repeats).
    pub fn try_send_udp(&self, to: SocketAddr, bytes: &[u8]) -> bool {
        self.udp.try_send_to(bytes, to).is_ok()
    }

    /// The UDP socket's receive buffer as the kernel reports it (twice what was asked:
    /// the kernel counts its bookkeeping in it).
    pub fn udp_receive_buffer(&self) -> std::io::Result<usize> {
        nix::sys::socket::getsockopt(&*self.udp, nix::sys::socket::sockopt::RcvBuf)
            .map_err(std::io::Error::from)
    }

    /// The bound address (the same port for UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends `bytes` to `to` over `transport`; TCP reuses a connection to `to` when one is
    /// open (the one a request came in on), and connects otherwise.
    pub async fn send(
        &self,
        transport: Transport,
        to: SocketAddr,
        bytes: Bytes,
    ) -> Result<(), SendError> {
        let io = |source| SendError::Io {
            transport,
            to,
            source,
        };
        match transport {
            Transport::Udp => self.udp.send_to(&bytes, to).await.map(|_| ()).map_err(io),
            Transport::Tls => Err(SendError::Unsupported(transport)),
            Transport::Tcp => {
                let existing = self.conns.lock().ok().and_then(|c| c.get(&to).cloned());
                let tx = match existing {
                    Some(tx) if !tx.is_closed() => tx,
                    _ => {
                        let stream = if self.connect_from_local {
                            let sock = shared_port_socket(self.local)
                                .and_then(|s| s.bind(self.local).map(|()| s))
                                .map_err(io)?;
                            sock.connect(to).await.map_err(io)?
                        } else if !self.local.ip().is_unspecified() {
                            // From our own address (any port): a daemon on one of several
                            // addresses of a host must not reach its peers from another's
                            // (the P-CSCF trusts requests toward UEs by their source).
                            let sock = if self.local.is_ipv4() {
                                tokio::net::TcpSocket::new_v4()
                            } else {
                                tokio::net::TcpSocket::new_v6()
                            };
                            let sock = sock
                                .and_then(|s| {
                                    s.bind(SocketAddr::new(self.local.ip(), 0)).map(|()| s)
                                })
                                .map_err(io)?;
                            sock.connect(to).await.map_err(io)?
                        } else {
                            TcpStream::connect(to).await.map_err(io)?
                        };
                        self.spawn_conn(stream, to)
                    }
                };
                self.unwritten.add();
                tx.send(bytes).await.map_err(|_| {
                    self.unwritten.done(1);
                    io(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "connection closed",
                    ))
                })
            }
        }
    }

    /// Waits, at most `limit`, until every message handed to a TCP connection is written
    /// (or its connection failed); false when the limit came first. [`SipTransport::send`]
    /// over TCP only queues the message for the connection's writer task, so a program that
    /// ends right after its last send (a UE answering a MESSAGE, then exiting) flushes first.
    pub async fn flush(&self, limit: Duration) -> bool {
        let end = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.unwritten.idle.notified();
            tokio::pin!(idle);
            // Registered before the count is read: a notification in between is not lost.
            idle.as_mut().enable();
            if self.unwritten.n.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(end, idle).await.is_err() {
                return false;
            }
        }
    }

    /// Open TCP connections (accepted and opened).
    pub fn tcp_connections(&self) -> usize {
        self.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    async fn udp_loop(self) {
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, from) = match self.udp.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "SIP UDP receive failed");
                    continue;
                }
            };
            let data = &buf[..n];
            if data.iter().all(|&b| b == b'\r' || b == b'\n') {
                continue; // keepalive
            }
            match Message::parse_with_limit(Bytes::copy_from_slice(data), self.max_len) {
                Ok(message) => {
                    self.incoming
                        .deliver(Incoming {
                            message,
                            source: from,
                            transport: Transport::Udp,
                            local: self.local,
                        })
                        .await;
                }
                Err(e) => {
                    tracing::info!(%from, error = %e, "malformed SIP datagram dropped")
                }
            }
        }
    }

    async fn accept_loop(self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, from)) => {
                    self.spawn_conn(stream, from);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "SIP TCP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Registers a connection and starts its reader and writer.
    fn spawn_conn(&self, stream: TcpStream, peer: SocketAddr) -> mpsc::Sender<Bytes> {
        let _ = stream.set_nodelay(true);
        let (tx, mut rx) = mpsc::channel::<Bytes>(256);
        if let Ok(mut c) = self.conns.lock() {
            c.insert(peer, tx.clone());
        }
        let (mut rd, mut wr) = stream.into_split();
        let conns = self.conns.clone();
        let unwritten = self.unwritten.clone();
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                let written = wr.write_all(&b).await.is_ok();
                unwritten.done(1);
                if !written {
                    break;
                }
            }
            // A failed connection: what was queued behind is dropped (and no longer waited
            // for); a send after this fails and counts itself out.
            rx.close();
            let mut dropped = 0;
            while rx.try_recv().is_ok() {
                dropped += 1;
            }
            unwritten.done(dropped);
        });
        let this = self.clone();
        let pong = tx.clone();
        tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(8192);
            let mut chunk = vec![0u8; 65_536];
            'read: loop {
                let n = match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    match frame(&buf, this.max_len) {
                        Ok(Frame::Incomplete) => break,
                        Ok(Frame::Keepalive(k)) => {
                            // RFC 5626 §3.5.1: answer a double-CRLF ping with one CRLF.
                            if k >= 4 {
                                this.unwritten.add();
                                if pong.send(Bytes::from_static(b"\r\n")).await.is_err() {
                                    this.unwritten.done(1);
                                }
                            }
                            buf.drain(..k);
                        }
                        Ok(Frame::Message(len)) => {
                            let bytes = Bytes::copy_from_slice(&buf[..len]);
                            buf.drain(..len);
                            match Message::parse_with_limit(bytes, this.max_len) {
                                Ok(message) => {
                                    this.incoming
                                        .deliver(Incoming {
                                            message,
                                            source: peer,
                                            transport: Transport::Tcp,
                                            local: this.local,
                                        })
                                        .await;
                                }
                                Err(e) => {
                                    tracing::info!(%peer, error = %e, "malformed SIP message on TCP dropped")
                                }
                            }
                        }
                        Err(e) => {
                            tracing::info!(%peer, error = %e, "SIP stream cannot be framed: closing the connection");
                            break 'read;
                        }
                    }
                }
            }
            if let Ok(mut c) = conns.lock() {
                c.remove(&peer);
            }
        });
        tx
    }
}

/// What a SIP UDP socket asks for as its receive buffer (see the module docs): 4 MiB, some
/// 2,000 datagrams of a registration, over half a second of the P-CSCF's messages at this
/// machine's full rate. The kernel takes the memory only while datagrams wait in it.
pub const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// Asks for [`UDP_RECEIVE_BUFFER`] on `udp`: past `net.core.rmem_max` when allowed
/// (`SO_RCVBUFFORCE`), else up to it; says so once when it got less.
fn enlarge_receive_buffer(udp: &UdpSocket, local: SocketAddr) {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    if setsockopt(udp, sockopt::RcvBufForce, &UDP_RECEIVE_BUFFER).is_err() {
        // Not privileged: the kernel caps this at net.core.rmem_max by itself.
        let _ = setsockopt(udp, sockopt::RcvBuf, &UDP_RECEIVE_BUFFER);
    }
    match getsockopt(udp, sockopt::RcvBuf) {
        // The kernel reports twice the size it granted.
        Ok(got) if got / 2 < UDP_RECEIVE_BUFFER => tracing::info!(
            %local,
            bytes = got / 2,
            wanted = UDP_RECEIVE_BUFFER,
            "SIP UDP receive buffer capped by net.core.rmem_max (no CAP_NET_ADMIN): \
             bursts beyond it are dropped and recovered only by retransmissions; raise \
             net.core.rmem_max to avoid that"
        ),
        Ok(_) => {}
        Err(e) => tracing::info!(%local, error = %e, "cannot read the SIP UDP receive buffer size"),
    }
}

/// A TCP socket that may share its port with our listener (SO_REUSEADDR + SO_REUSEPORT).
fn shared_port_socket(local: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let sock = if local.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.set_reuseport(true)?;
    Ok(sock)
}

async fn listen(addr: SocketAddr, shared: bool) -> std::io::Result<TcpListener> {
    if shared {
        let sock = shared_port_socket(addr)?;
        sock.bind(addr)?;
        sock.listen(1024)
    } else {
        TcpListener::bind(addr).await
    }
}

/// Binds UDP and TCP on the same port (retrying when port 0 gave a port taken on TCP).
async fn bind_both(addr: SocketAddr, shared: bool) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(addr).await?;
        let port = udp.local_addr()?.port();
        match listen(SocketAddr::new(addr.ip(), port), shared).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port free on both UDP and TCP")))
}
