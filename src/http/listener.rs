//! How both listeners (API and admin) serve connections: `axum::serve` has no header-read
//! timeout, no idle timeout and no connection cap, so a client holding a thousand
//! half-sent requests used to exhaust the node's file descriptors. Here each listener
//! accepts through hyper's connection builder with a header-read timeout, closes a
//! connection silent both ways for its idle timeout, and holds at most its cap of
//! connections: past it a new connection is closed as soon as it is accepted, so the
//! listener keeps accepting (and answering once slots free) whatever a client does.
//! Stopping lets in-flight requests finish (graceful shutdown of every connection).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use tower::ServiceExt;

use crate::config::ListenerLimits;

/// Pause after an accept error (out of file descriptors, say) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` within `limits` until `stop` turns true, then lets the
/// open connections finish their requests.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: axum::Router,
    limits: ListenerLimits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "accept failed; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: closed at once (dropping it), never left waiting with its descriptor.
            metrics::counter!("ms_http_connections_refused_total", "listener" => name).increment(1);
            tracing::debug!(
                listener = name,
                "connection cap reached; closing a new connection"
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (builder, router, stop) = (builder.clone(), router.clone(), stop.clone());
        tokio::spawn(async move {
            // The peer's address reaches handlers (audit records name it), as axum's
            // `into_make_service_with_connect_info` would give it.
            let router = router.map_request(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
            connection(&builder, stream, router, limits.idle_timeout, stop).await;
            drop(slot);
        });
    }
    // Every connection holds a slot until it ends: all of them back means all drained.
    let _ = slots.acquire_many(limits.max_connections as u32).await;
}

/// One connection: served until it ends; asked to finish (no new request after the one in
/// flight) when the listener stops or nothing moved on it for `idle`.
async fn connection(
    builder: &auto::Builder<TokioExecutor>,
    stream: TcpStream,
    router: impl tower::Service<
        hyper::Request<Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let born = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Tracked {
        inner: stream,
        born,
        last: activity.clone(),
    });
    let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    let mut asked = false;
    let tick = (idle / 4).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|stop| *stop), if !asked => {
                conn.as_mut().graceful_shutdown();
                asked = true;
            }
            () = tokio::time::sleep(tick), if !asked => {
                let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                if born.elapsed().saturating_sub(last) >= idle {
                    conn.as_mut().graceful_shutdown();
                    asked = true;
                }
            }
        }
    }
}

/// A stream that notes when bytes last moved on it (milliseconds since `born`).
struct Tracked {
    inner: TcpStream,
    born: Instant,
    last: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        self.last
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
