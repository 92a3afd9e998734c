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
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

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

/// How a server streams its answers: `stall` is how long a producer waits for a client that takes nothing.
#[derive(Clone)]
pub struct Streaming {
    pub stall: Duration,
}

/// Runs `produce` on the blocking pool, streaming what it writes as the response body; with `gzip` the
/// stream is compressed on the way. Errors after the first byte can only cut the body short (and are
/// logged), which is why callers validate everything before they start streaming. A body cut short ends
/// in an error, never cleanly, so that the client cannot take a truncated answer for a whole one (HTTP/1.1
/// closes the connection without the last chunk, HTTP/2 resets the stream).
pub fn stream_body<F>(streaming: &Streaming, gzip: bool, produce: F) -> Body
where
    F: FnOnce(&mut dyn Write) -> io::Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    let complete = Arc::new(AtomicBool::new(false));
    let writer = ChunkWriter { tx, stall: streaming.stall, broken: false };
    let done = complete.clone();
    tokio::task::spawn_blocking(move || produce_into(writer, done, gzip, produce));
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
