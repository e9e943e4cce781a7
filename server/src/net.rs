//! The connections of both listeners: one accept loop per listener that hands plaintext
//! connections on at once and runs each TLS handshake in a task of its own (bounded in time, so a
//! client that stalls mid-handshake holds nothing but its socket), with the TLS configuration
//! current at accept time — which is how a reloaded certificate reaches new connections while
//! established ones keep theirs. Also the per-connection count of open gRPC calls behind the
//! `--max-concurrent-streams` metric.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::codegen::http;
use tracing::{debug, warn};

use crate::metrics::{Limit, Listener, Metrics};
use crate::security::Security;

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers can learn about the connection a call came on (in the request's extensions).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// gRPC calls open on this connection.
    calls: Arc<AtomicUsize>,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection (after its handshake, with TLS).
pub struct Conn {
    io: Io,
    info: ConnInfo,
    _open: OpenConn,
}

/// Keeps the connection gauge of its listener up while the connection lives.
struct OpenConn {
    metrics: Arc<Metrics>,
    listener: Listener,
}

impl OpenConn {
    fn new(metrics: &Arc<Metrics>, listener: Listener) -> Self {
        metrics.security.connections(listener).inc();
        OpenConn {
            metrics: metrics.clone(),
            listener,
        }
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.metrics.security.connections(self.listener).dec();
    }
}

impl Conn {
    fn new(io: Io, remote: SocketAddr, metrics: &Arc<Metrics>, listener: Listener) -> Self {
        Conn {
            io,
            info: ConnInfo {
                remote,
                calls: Arc::default(),
            },
            _open: OpenConn::new(metrics, listener),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts on `listener` until the returned receiver is dropped; connections come out of it ready
/// to serve (TLS handshakes done, with the configuration `security` holds at accept time).
pub fn accept(
    listener: TcpListener,
    security: Arc<Security>,
    metrics: Arc<Metrics>,
    side: Listener,
) -> mpsc::Receiver<Conn> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning, as hyper and axum do.
                    warn!(error = %e, listener = ?side, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Some(configs) = security.tls() else {
                if tx
                    .send(Conn::new(Io::Plain(tcp), remote, &metrics, side))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            };
            let config = match side {
                Listener::Grpc => configs.grpc,
                Listener::Http => configs.http,
            };
            let (tx, metrics) = (tx.clone(), metrics.clone());
            tokio::spawn(async move {
                let handshake = TlsAcceptor::from(config).accept(tcp);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(stream)) => {
                        let io = Io::Tls(Box::new(stream));
                        let _ = tx.send(Conn::new(io, remote, &metrics, side)).await;
                    }
                    Ok(Err(e)) => {
                        metrics.security.tls_handshake_failure(side);
                        debug!(%remote, error = %e, listener = ?side, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics.security.tls_handshake_failure(side);
                        debug!(%remote, listener = ?side, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    rx
}

/// The HTTP endpoint's side of [`accept`], for `axum::serve`.
pub struct HttpListener {
    rx: mpsc::Receiver<Conn>,
    local: SocketAddr,
}

impl HttpListener {
    pub fn new(
        listener: TcpListener,
        security: Arc<Security>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(HttpListener {
            rx: accept(listener, security, metrics, Listener::Http),
            local,
        })
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.rx.recv().await {
            Some(conn) => {
                let remote = conn.info.remote;
                (conn, remote)
            }
            // The accept loop ends only when this receiver is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Counts each connection's open gRPC calls (a call is open until its response body is done),
/// recording when one reaches `--max-concurrent-streams`: HTTP/2 then makes further calls on that
/// connection wait (or refuses them, for a client that ignores the setting).
#[derive(Clone)]
pub struct CallsLayer {
    limit: Option<u32>,
    metrics: Arc<Metrics>,
}

impl CallsLayer {
    pub fn new(limit: Option<u32>, metrics: Arc<Metrics>) -> Self {
        CallsLayer { limit, metrics }
    }
}

impl<S> tower::Layer<S> for CallsLayer {
    type Service = Calls<S>;
    fn layer(&self, inner: S) -> Calls<S> {
        Calls {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Calls<S> {
    inner: S,
    layer: CallsLayer,
}

/// An open call: decrements its connection's count (and the gauge) when dropped.
struct OpenCall {
    calls: Option<Arc<AtomicUsize>>,
    metrics: Arc<Metrics>,
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        if let Some(c) = &self.calls {
            c.fetch_sub(1, Ordering::Relaxed);
        }
        self.metrics.security.open_calls.dec();
    }
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Calls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let calls = req.extensions().get::<ConnInfo>().map(|i| i.calls.clone());
        let metrics = self.layer.metrics.clone();
        metrics.security.open_calls.inc();
        if let Some(c) = &calls {
            let open = c.fetch_add(1, Ordering::Relaxed) + 1;
            if self.layer.limit.is_some_and(|l| open >= l as usize) {
                metrics.security.limit_hit(Limit::MaxConcurrentStreams);
            }
        }
        let guard = OpenCall { calls, metrics };
        let future = self.inner.call(req);
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(|body| {
                tonic::body::Body::new(CountedBody {
                    body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// A response body that keeps its call counted until it is done.
struct CountedBody {
    body: tonic::body::Body,
    _guard: OpenCall,
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
