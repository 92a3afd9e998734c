//! Response bodies: small ones in one piece, large multistatus answers streamed (optionally gzipped) from a
//! blocking task through a bounded channel, so memory stays flat however big the address book is.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use std::io::{self, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

pub type Body = BoxBody<Bytes, io::Error>;

/// A request's body as hyper delivers it, noting when it has been received to the end: a request that runs
/// out of time before that is the client's slowness (408), after it the server's (503).
pub struct RequestBody {
    inner: Incoming,
    received: Arc<AtomicBool>,
}

impl RequestBody {
    /// Wraps `inner`; `received` becomes true once its last frame has arrived (at once for an empty body).
    pub fn new(inner: Incoming) -> (Self, Arc<AtomicBool>) {
        let received = Arc::new(AtomicBool::new(inner.is_end_stream()));
        (RequestBody { inner, received: received.clone() }, received)
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.received.store(true, Ordering::Relaxed);
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
/// taken nothing for `stall` (its answer holds one of the server's producer slots).
pub struct ChunkWriter {
    tx: Chunks,
    stall: Duration,
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "client went away");
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

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A server's slots for producing streamed answers. Each answer being produced holds a blocking thread, a
/// database connection with its page cache (up to 16 MB) and a deflate state; beyond a couple per core they
/// add memory, not speed. 24 devices full-syncing a 100,000-card book at once peaked at 468 MB without
/// this limit and at 189 MB with it, in the same time (BENCHMARKS.md). Answers beyond the limit wait for a
/// slot, holding nothing. A client that stops reading loses its answer after `stall`, so that a few such
/// clients cannot keep the slots from everybody else.
#[derive(Clone)]
pub struct Producers {
    slots: Arc<Semaphore>,
    stall: Duration,
}

impl Producers {
    /// Two slots per core, at least four.
    pub fn new(stall: Duration) -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Producers { slots: Arc::new(Semaphore::new((cores * 2).max(4))), stall }
    }
}

/// Runs `produce` on the blocking pool, streaming what it writes as the response body; with `gzip` the
/// stream is compressed on the way. Errors after the first byte can only cut the body short (and are
/// logged), which is why callers validate everything before they start streaming. A body cut short ends
/// in an error, never cleanly, so that the client cannot take a truncated answer for a whole one (HTTP/1.1
/// closes the connection without the last chunk, HTTP/2 resets the stream).
pub fn stream_body<F>(producers: &Producers, gzip: bool, produce: F) -> Body
where
    F: FnOnce(&mut dyn Write) -> io::Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    let failed = Arc::new(AtomicBool::new(false));
    let writer = ChunkWriter { tx, stall: producers.stall };
    let cut = failed.clone();
    match producers.slots.clone().try_acquire_owned() {
        Ok(slot) => {
            tokio::task::spawn_blocking(move || produce_into(writer, cut, gzip, produce, slot));
        }
        Err(_) => {
            let slots = producers.slots.clone();
            tokio::spawn(async move {
                // Never closed; a client that left while its answer waited gets nothing produced.
                let Ok(slot) = slots.acquire_owned().await else { return };
                if writer.tx.is_closed() {
                    return;
                }
                tokio::task::spawn_blocking(move || produce_into(writer, cut, gzip, produce, slot));
            });
        }
    }
    BodyExt::boxed(StreamBody::new(chunk_stream(rx, failed)))
}

/// The blocking half of `stream_body`. `_slot` is released when production ends; `failed` is set before the
/// writer (the channel's sender) is dropped, so the body sees it when the channel ends.
fn produce_into<F>(
    mut writer: ChunkWriter,
    failed: Arc<AtomicBool>,
    gzip: bool,
    produce: F,
    _slot: OwnedSemaphorePermit,
) where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let result = if gzip {
        let mut encoder = flate2::write::GzEncoder::new(writer, flate2::Compression::fast());
        produce(&mut encoder).and_then(|_| encoder.finish().map(|_| ()))
    } else {
        produce(&mut writer)
    };
    let Err(e) = result else { return };
    failed.store(true, Ordering::Release);
    match e.kind() {
        io::ErrorKind::BrokenPipe => {}
        io::ErrorKind::TimedOut => tracing::warn!("a client stopped reading its streamed answer; the answer was cut"),
        _ => tracing::error!(error = %e, "streamed response failed"),
    }
}

/// The body's chunks as they arrive; when the producer failed, an error instead of a clean end.
fn chunk_stream(
    mut rx: mpsc::Receiver<Result<Frame<Bytes>, io::Error>>,
    failed: Arc<AtomicBool>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, io::Error>> {
    futures_util::stream::poll_fn(move |cx| match rx.poll_recv(cx) {
        Poll::Ready(None) if failed.load(Ordering::Acquire) => {
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
