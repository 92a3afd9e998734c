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
use tokio::sync::mpsc;

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

/// An `io::Write` that sends what is written as body chunks; fails once the client is gone.
pub struct ChunkWriter {
    tx: mpsc::Sender<Result<Frame<Bytes>, io::Error>>,
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.tx
            .blocking_send(Ok(Frame::data(Bytes::copy_from_slice(buf))))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `produce` on the blocking pool, streaming what it writes as the response body; with `gzip` the
/// stream is compressed on the way. Errors after the first byte can only cut the body short (and are
/// logged), which is why callers validate everything before they start streaming.
pub fn stream_body<F>(gzip: bool, produce: F) -> Body
where
    F: FnOnce(&mut dyn Write) -> io::Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    let error_tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        let writer = ChunkWriter { tx };
        let result = if gzip {
            let mut encoder = flate2::write::GzEncoder::new(writer, flate2::Compression::fast());
            produce(&mut encoder).and_then(|_| encoder.finish().map(|_| ()))
        } else {
            let mut writer = writer;
            produce(&mut writer)
        };
        if let Err(e) = result
            && e.kind() != io::ErrorKind::BrokenPipe
        {
            tracing::error!(error = %e, "streamed response failed");
            let _ = error_tx.blocking_send(Err(e));
        }
    });
    let stream = tokio_stream_from(rx);
    BodyExt::boxed(StreamBody::new(stream))
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Frame<Bytes>, io::Error>>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
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
