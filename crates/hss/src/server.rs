//! The HSS's Diameter side: ims-net's Diameter server ([`ims_net::diameter::server`]: the
//! listener, the responder peer per connection, the registry of open peers through which
//! the admin API sends RTR and PPR, relay routing, 3004 when too many requests wait on the
//! store) with the Cx handler ([`crate::cx::CxHandler`]) behind it, each answer counted in
//! the HSS's metrics.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ims_diameter::peer::PeerConfig;
use ims_net::diameter::server::Handler;
use tokio::net::TcpListener;

pub use ims_net::diameter::server::{DiameterServer as Diameter, SendError};

use crate::cx::CxHandler;
use crate::metrics::Metrics;

/// Binds the listener; [`serve`] runs it.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Accepts connections until the returned future is dropped; at most `max_waiting` Cx
/// requests wait on the store at once.
pub fn serve(
    listener: TcpListener,
    peer_cfg: PeerConfig,
    cx: CxHandler,
    metrics: Arc<Metrics>,
    max_waiting: usize,
) -> (Diameter, impl Future<Output = ()>) {
    ims_net::diameter::server::serve(listener, peer_cfg, Cx { cx, metrics }, max_waiting)
}

/// The Cx handler as the Diameter server's [`Handler`], with its metrics.
#[derive(Clone)]
struct Cx {
    cx: CxHandler,
    metrics: Arc<Metrics>,
}

impl Handler for Cx {
    fn handle(&self, request: Vec<u8>) -> impl Future<Output = Vec<u8>> + Send + 'static {
        let (cx, metrics) = (self.cx.clone(), self.metrics.clone());
        async move {
            let t = Instant::now();
            let out = cx.handle(&request).await;
            metrics.answered(out.command, out.result, t.elapsed(), out.resync);
            out.answer
        }
    }

    fn busy(&self, request: &[u8]) -> Vec<u8> {
        let t = Instant::now();
        let out = self.cx.busy(request);
        self.metrics
            .answered(out.command, out.result, t.elapsed(), false);
        out.answer
    }

    fn peer(&self, _host: &str, up: bool) {
        self.metrics.peer_up(if up { 1 } else { -1 });
    }
}
