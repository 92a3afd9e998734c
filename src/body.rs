//! Response bodies: small ones in one piece, large multistatus answers streamed (optionally gzipped) from a
//! blocking task through a bounded channel, so memory stays flat however big the address book is.

use crate::error::{DavError, DavResult};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::StatusCode;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use std::collections::HashMap;
use std::io::{self, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

pub type Body = BoxBody<Bytes, io::Error>;

/// A request's body as hyper delivers it, noting when a frame last arrived and when it has been received to
/// the end: a request that runs out of time before that is the client's slowness (408), after it the
/// server's (503), and a body still arriving steadily may take longer than the request limit.
pub struct RequestBody {
    inner: Incoming,
    progress: Arc<BodyProgress>,
}

/// How far a request's body has come.
pub struct BodyProgress {
    started: Instant,
    received: AtomicBool,
    /// Milliseconds after `started` when the last frame arrived.
    last_frame: AtomicU64,
}

impl BodyProgress {
    pub fn received(&self) -> bool {
        self.received.load(Ordering::Relaxed)
    }

    /// When the last frame of the body arrived (the request's start if none has).
    pub fn last_frame(&self) -> Instant {
        self.started + Duration::from_millis(self.last_frame.load(Ordering::Relaxed))
    }
}

impl RequestBody {
    /// Wraps `inner`; `received` becomes true once its last frame has arrived (at once for an empty body).
    pub fn new(inner: Incoming) -> (Self, Arc<BodyProgress>) {
        let progress = Arc::new(BodyProgress {
            started: Instant::now(),
            received: AtomicBool::new(inner.is_end_stream()),
            last_frame: AtomicU64::new(0),
        });
        (RequestBody { inner, progress: progress.clone() }, progress)
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(Ok(_)))) {
            let since = self.progress.started.elapsed().as_millis() as u64;
            self.progress.last_frame.store(since, Ordering::Relaxed);
        }
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.progress.received.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

type Chunks = mpsc::Sender<Result<Frame<Bytes>, io::Error>>;

/// An `io::Write` that sends what is written as body chunks; fails once the client is gone, or when it has
/// taken nothing for `stall` (a producer blocked on it holds a thread and a database snapshot). After one
/// failure every write fails at once, so that an encoder's flush on drop does not wait again.
pub struct ChunkWriter {
    tx: Chunks,
    stall: Duration,
    broken: bool,
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.send(buf);
        self.broken |= result.is_err();
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ChunkWriter {
    fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "client went away");
        if self.broken {
            return Err(gone());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        match self.tx.try_send(Ok(Frame::data(Bytes::copy_from_slice(buf)))) {
            Ok(()) => {}
            Err(TrySendError::Closed(_)) => return Err(gone()),
            // The channel is full: the client reads slower than we produce. Wait for it, within limits.
            Err(TrySendError::Full(chunk)) => {
                let send = tokio::time::timeout(self.stall, self.tx.send(chunk));
                match tokio::runtime::Handle::current().block_on(send) {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(gone()),
                    Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")),
                }
            }
        }
        Ok(buf.len())
    }
}

/// Streamed answers one user may have in production at once, and all users together. Each holds a thread
/// of the blocking pool (512) and a SQLite reader while it runs, and waits up to `stall` for a client that
/// takes nothing: without limits, one user with a few HTTP/2 connections could take every thread, and
/// everyone's writes and logins would wait (found by a review). Real clients run one or two at a time.
const PRODUCERS_PER_USER: usize = 16;
const PRODUCERS_TOTAL: usize = 128;
/// How long an answer waits for a slot before it is refused with 503 and `Retry-After`.
const SLOT_WAIT: Duration = Duration::from_secs(10);

/// How a server streams its answers: `stall` is how long a producer waits for a client that takes nothing;
/// the slots bound how many producers run at once.
#[derive(Clone)]
pub struct Streaming {
    pub stall: Duration,
    total: Arc<Semaphore>,
    per_user: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    per_user_max: usize,
    slot_wait: Duration,
}

/// The right to run one producer; held by it until it ends.
pub struct Slot {
    _user: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl Streaming {
    pub fn new(stall: Duration) -> Self {
        Self::with_limits(stall, PRODUCERS_PER_USER, PRODUCERS_TOTAL, SLOT_WAIT)
    }

    fn with_limits(stall: Duration, per_user_max: usize, total: usize, slot_wait: Duration) -> Self {
        Streaming {
            stall,
            total: Arc::new(Semaphore::new(total)),
            per_user: Arc::new(Mutex::new(HashMap::new())),
            per_user_max,
            slot_wait,
        }
    }

    /// A slot for one streamed answer of `user`; waits up to `SLOT_WAIT`, then 503 with `Retry-After`.
    pub async fn slot(&self, user: &str) -> DavResult<Slot> {
        let mine = {
            let mut per_user = self.per_user.lock().map_err(|_| {
                DavError::new(StatusCode::INTERNAL_SERVER_ERROR, "the producer slots were poisoned by a panic")
            })?;
            per_user.entry(user.to_string()).or_insert_with(|| Arc::new(Semaphore::new(self.per_user_max))).clone()
        };
        let busy = || {
            tracing::warn!(%user, "no slot for a streamed answer within {:?}; answering 503", self.slot_wait);
            DavError::new(StatusCode::SERVICE_UNAVAILABLE, "too many answers are being produced at once; retry soon")
                .with_header(hyper::header::RETRY_AFTER, "5")
        };
        let acquire = async {
            let user_permit = mine.acquire_owned().await.ok()?;
            let total_permit = self.total.clone().acquire_owned().await.ok()?;
            Some(Slot { _user: user_permit, _total: total_permit })
        };
        tokio::time::timeout(self.slot_wait, acquire).await.ok().flatten().ok_or_else(busy)
    }
}

/// Runs `produce` on the blocking pool, streaming what it writes as the response body; with `gzip` the
/// stream is compressed on the way. Errors after the first byte can only cut the body short (and are
/// logged), which is why callers validate everything before they start streaming. A body cut short ends
/// in an error, never cleanly, so that the client cannot take a truncated answer for a whole one (HTTP/1.1
/// closes the connection without the last chunk, HTTP/2 resets the stream).
pub fn stream_body<F>(streaming: &Streaming, slot: Slot, gzip: bool, produce: F) -> Body
where
    F: FnOnce(&mut dyn Write) -> io::Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    let complete = Arc::new(AtomicBool::new(false));
    let writer = ChunkWriter { tx, stall: streaming.stall, broken: false };
    let done = complete.clone();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        produce_into(writer, done, gzip, produce)
    });
    BodyExt::boxed(StreamBody::new(chunk_stream(rx, complete)))
}

/// The blocking half of `stream_body`. `complete` is set only after the whole answer (with its gzip trailer)
/// was handed over, and before the channel's sender is dropped: an error, a panic or an encoder finishing
/// on drop all leave it unset, so the body ends in an error.
fn produce_into<F>(writer: ChunkWriter, complete: Arc<AtomicBool>, gzip: bool, produce: F)
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let result = if gzip {
        let mut encoder = flate2::write::GzEncoder::new(writer, flate2::Compression::fast());
        produce(&mut encoder).and_then(|()| encoder.finish())
    } else {
        let mut writer = writer;
        produce(&mut writer).map(|()| writer)
    };
    match result {
        Ok(writer) => {
            complete.store(true, Ordering::Release);
            drop(writer);
        }
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            tracing::warn!("a client stopped reading its streamed answer; the answer was cut")
        }
        Err(e) => tracing::error!(error = %e, "streamed response failed"),
    }
}

/// The body's chunks as they arrive; unless the producer finished the answer, an error instead of a clean end.
fn chunk_stream(
    mut rx: mpsc::Receiver<Result<Frame<Bytes>, io::Error>>,
    complete: Arc<AtomicBool>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, io::Error>> {
    futures_util::stream::poll_fn(move |cx| match rx.poll_recv(cx) {
        Poll::Ready(None) if !complete.load(Ordering::Acquire) => {
            Poll::Ready(Some(Err(io::Error::other("the answer could not be completed"))))
        }
        polled => polled,
    })
}

/// Does the client accept gzip (`Accept-Encoding: gzip`, not `gzip;q=0`)?
pub fn accepts_gzip(headers: &hyper::HeaderMap) -> bool {
    headers.get_all(hyper::header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').any(|part| {
            let mut it = part.split(';');
            let coding = it.next().unwrap_or("").trim();
            let q_zero = it.any(|p| {
                let p = p.trim();
                p == "q=0" || p == "q=0.0" || p == "q=0.00" || p == "q=0.000"
            });
            coding.eq_ignore_ascii_case("gzip") && !q_zero
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn producer_slots_are_bounded_per_user_and_in_total() {
        let streaming = Streaming::with_limits(Duration::from_secs(1), 2, 3, Duration::from_millis(50));
        let a1 = streaming.slot("a").await.expect("a's first");
        let _a2 = streaming.slot("a").await.expect("a's second");
        let refused = streaming.slot("a").await.err().expect("a's third waits, then is refused");
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        let _b1 = streaming.slot("b").await.expect("another user is not held up by a");
        assert!(streaming.slot("c").await.is_err(), "3 in total");
        drop(a1);
        assert!(streaming.slot("c").await.is_ok(), "a slot comes back when its producer ends");
    }
}
