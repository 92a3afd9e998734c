//! The connection layer: accept, TLS handshake, HTTP/1.1 and HTTP/2, connection and time limits, graceful
//! shutdown. It knows nothing about DAV: every request goes to `App::handle`.

use crate::app::App;
use crate::body::{Body, RequestBody};
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = app.config.limits.clone();
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Covers both a slow request head (slowloris) and an idle keep-alive connection.
        .header_read_timeout(Duration::from_secs(limits.idle_timeout_secs.max(1)))
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        // hyper's default is 200 streams per connection; clients sync with a handful, and each stream may
        // hold an answer in memory or a producer thread.
        .max_concurrent_streams(32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    // Every connection's task, so that the ones still open after the grace period can be cut (below).
    let mut tasks = tokio::task::JoinSet::new();
    let addresses = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = shutdown.changed() => break,
            permit = connections.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // A trusted proxy carries many clients' connections: only the overall limit applies to it.
        let proxy = app.config.server.trusted_proxies.iter().any(|t| t.to_canonical() == peer.ip().to_canonical());
        let per_address_max = if proxy { usize::MAX } else { limits.max_connections_per_ip };
        let Some(per_address) = PerAddress::claim(&addresses, peer.ip(), per_address_max) else {
            tracing::warn!(client = %peer.ip(), "refused a connection: the address holds its maximum already");
            continue; // dropping the stream closes it, and the permit goes back
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let builder = builder.clone();
        let request_timeout = Duration::from_secs(limits.request_timeout_secs.max(1));
        let idle_timeout = Duration::from_secs(limits.idle_timeout_secs.max(1));
        let handshake_timeout = Duration::from_secs(limits.idle_timeout_secs.clamp(1, 30));
        let watcher = graceful.watcher();
        tasks.spawn(async move {
            let _permit = permit;
            let _per_address = per_address;
            let activity = Arc::new(Activity::new());
            let tracker = activity.clone();
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let app = app.clone();
                let in_flight = InFlight::start(tracker.clone());
                let (parts, body) = req.into_parts();
                let (body, progress) = RequestBody::new(body);
                let req = Request::from_parts(parts, body);
                async move {
                    let handling = app.handle(req, peer);
                    tokio::pin!(handling);
                    let mut deadline = tokio::time::Instant::now() + request_timeout;
                    let response = loop {
                        match tokio::time::timeout_at(deadline, &mut handling).await {
                            Ok(r) => break r,
                            // A body still arriving has the limit from its last frame, not from the request's
                            // start: a large upload over a slow line is slow, not stuck.
                            Err(_)
                                if !progress.received() && progress.last_frame() + request_timeout > Instant::now() =>
                            {
                                deadline = (progress.last_frame() + request_timeout).into();
                            }
                            Err(_) => break timeout_response(progress.received(), peer),
                        }
                    };
                    Ok::<Response<Tracked>, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
                }
            });
            // hyper's header read timeout covers a slow HTTP/1 request head and idle HTTP/1 keep-alive, but
            // not a TLS connection that never sends a byte (the HTTP version is not known yet), an idle
            // HTTP/2 connection, or a client that stops reading a streamed answer (which would hold a
            // blocking thread): the watchdog closes those.
            let served = async {
                match tls {
                    Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            activity.touch();
                            let io = Metered { inner: tls_stream, activity: activity.clone() };
                            let conn = builder.serve_connection(TokioIo::new(io), service);
                            watcher.watch(conn.into_owned()).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            Ok(())
                        }
                    },
                    None => {
                        let io = Metered { inner: stream, activity: activity.clone() };
                        watcher.watch(builder.serve_connection(TokioIo::new(io), service).into_owned()).await
                    }
                }
            };
            tokio::select! {
                result = served => if let Err(e) = result {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                },
                why = activity.watchdog(idle_timeout, idle_timeout.max(request_timeout)) => {
                    tracing::debug!(%peer, "closed a connection that was {why}");
                }
            }
        });
    }
    drop(listener);
    // Finish in-flight requests, but do not wait forever for idle keep-alive connections or for clients
    // that stopped reading.
    let grace = Duration::from_secs(limits.shutdown_grace_secs);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            "cutting the connections still open {}s after shutdown began",
            grace.as_secs()
        );
    }
    // Ending the tasks drops their streamed answers, so every producer sees the client gone at its next
    // chunk: it ends its read transaction (which the WAL checkpoint at shutdown waits for) and never starts
    // a timed wait while the runtime's timers are shutting down.
    tasks.shutdown().await;
}

/// A request that did not produce its response head within `request_timeout_secs`. If its body had not
/// arrived in full, the client was too slow (408, RFC 9110 §15.5.9: a body trickling in); otherwise the server
/// was (503). Either way the connection is closed, since the request body may be half read.
fn timeout_response(body_received: bool, peer: std::net::SocketAddr) -> Response<Body> {
    let (status, message) = if body_received {
        (StatusCode::SERVICE_UNAVAILABLE, "the server took too long to answer\n")
    } else {
        (StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time\n")
    };
    tracing::warn!(%peer, status = status.as_u16(), "request timed out");
    let mut r = Response::new(crate::body::full(message));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    r
}

/// Open connections per client address. Without a limit, one address could hold every connection slot
/// with requests that trickle in (slowloris), and nobody else could connect until their heads timed out.
struct PerAddress {
    addresses: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl PerAddress {
    /// Counts one more connection of `ip`, unless it has `max` already.
    fn claim(
        addresses: &Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
        ip: std::net::IpAddr,
        max: usize,
    ) -> Option<PerAddress> {
        let mut open = addresses.lock().ok()?;
        let count = open.entry(ip).or_insert(0);
        if *count >= max.max(1) {
            return None;
        }
        *count += 1;
        Some(PerAddress { addresses: addresses.clone(), ip })
    }
}

impl Drop for PerAddress {
    fn drop(&mut self) {
        if let Ok(mut open) = self.addresses.lock()
            && let Some(count) = open.get_mut(&self.ip)
        {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What one connection is doing, for the watchdog: requests whose response is not completely sent, when
/// the last one finished (or the connection opened), when bytes last moved, and when each response being
/// sent was last asked for more (milliseconds since `opened`).
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    idle_since: AtomicU64,
    last_io: AtomicU64,
    /// Response id → when hyper last polled its body. On HTTP/2 the connection's bytes say nothing about
    /// one stream: pings or other streams keep them moving while a stream whose window the client never
    /// opens holds its answer (a whole card in memory, or a producer thread) forever.
    responses: std::sync::Mutex<std::collections::HashMap<u64, u64>>,
    next_response: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            last_io: AtomicU64::new(0),
            responses: std::sync::Mutex::new(std::collections::HashMap::new()),
            next_response: AtomicU64::new(0),
        }
    }

    /// A response starts being sent; returns its id for `response_polled` and `response_done`.
    fn response_started(&self) -> u64 {
        let id = self.next_response.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut responses) = self.responses.lock() {
            responses.insert(id, self.now());
        }
        id
    }

    fn response_polled(&self, id: u64) {
        if let Ok(mut responses) = self.responses.lock()
            && let Some(last) = responses.get_mut(&id)
        {
            *last = self.now();
        }
    }

    fn response_done(&self, id: u64) {
        if let Ok(mut responses) = self.responses.lock() {
            responses.remove(&id);
        }
    }

    /// When the response that has waited longest for the client was last polled.
    fn oldest_response_poll(&self) -> Option<u64> {
        self.responses.lock().ok()?.values().copied().min()
    }

    fn now(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.idle_since.store(self.now(), Ordering::Relaxed);
    }

    fn moved(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    /// Completes when the connection has had nothing in flight for `idle`, or requests in flight but no byte
    /// read or written for `stalled`; says which.
    async fn watchdog(&self, idle: Duration, stalled: Duration) -> &'static str {
        let (idle, stalled) = (idle.as_millis() as u64, stalled.as_millis() as u64);
        loop {
            let now = self.now();
            let wait = if self.in_flight.load(Ordering::SeqCst) == 0 {
                let quiet = now.saturating_sub(self.idle_since.load(Ordering::Relaxed));
                if quiet >= idle {
                    return "idle";
                }
                idle - quiet
            } else {
                let quiet = now.saturating_sub(self.last_io.load(Ordering::Relaxed));
                if quiet >= stalled {
                    return "stalled with a request in flight";
                }
                let waiting = self.oldest_response_poll().map_or(0, |polled| now.saturating_sub(polled));
                if waiting >= stalled {
                    return "holding a response its client took nothing of";
                }
                (stalled - quiet).min(stalled - waiting)
            };
            tokio::time::sleep(Duration::from_millis(wait.max(50))).await;
        }
    }
}

/// The connection's byte stream, noting in `Activity` whenever bytes move.
struct Metered<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.moved();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts one request as in flight from its head until its response body is dropped (sent or abandoned).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.moved();
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight while it streams, and tells the watchdog
/// when hyper last asked it for more.
struct Tracked {
    body: Body,
    response: u64,
    in_flight: InFlight,
}

impl Tracked {
    fn new(body: Body, in_flight: InFlight) -> Self {
        let response = in_flight.0.response_started();
        Tracked { body, response, in_flight }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.in_flight.0.response_done(self.response);
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.in_flight.0.response_polled(self.response);
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
