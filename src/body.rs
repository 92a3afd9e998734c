//! Response bodies: small ones in one piece, large multistatus answers streamed from a blocking task through
//! a bounded channel (compressed with zstd or gzip when the client accepts it), so memory stays flat however
//! big the address book is.

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

/// What a producer writes its answer into: the coding the client accepts is applied on the way.
pub trait AnswerSink: Write {
    /// Appends a zstd frame made in advance (`card_xml_frame`) after what was written so far, which ends the
    /// frame being written. Only answers coded in zstd take them (`takes_zstd_frames`).
    fn splice_zstd_frame(&mut self, frame: &[u8]) -> io::Result<()>;

    fn takes_zstd_frames(&self) -> bool {
        false
    }
}

/// For producers that chose frames for an answer that is not coded in zstd: a bug, which cuts the answer.
fn no_frames() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "a zstd frame in an answer not coded in zstd")
}

impl AnswerSink for ChunkWriter {
    fn splice_zstd_frame(&mut self, _: &[u8]) -> io::Result<()> {
        Err(no_frames())
    }
}

impl AnswerSink for flate2::write::GzEncoder<ChunkWriter> {
    fn splice_zstd_frame(&mut self, _: &[u8]) -> io::Result<()> {
        Err(no_frames())
    }
}

impl AnswerSink for Vec<u8> {
    fn splice_zstd_frame(&mut self, _: &[u8]) -> io::Result<()> {
        Err(no_frames())
    }
}

impl<T: AnswerSink + ?Sized> AnswerSink for &mut T {
    fn splice_zstd_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        (**self).splice_zstd_frame(frame)
    }

    fn takes_zstd_frames(&self) -> bool {
        (**self).takes_zstd_frames()
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

/// How a streamed answer is encoded on the wire (`Content-Encoding`), chosen by `Coding::negotiate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    /// RFC 8878. Thunderbird (like Firefox) asks for it over HTTPS. At level 1 it compresses a multistatus
    /// about twice as fast as gzip's fastest level, to about 40 % fewer bytes, and decompresses four times as
    /// fast (BENCHMARKS.md, optimization 13).
    Zstd,
}

impl Coding {
    /// The coding for a large answer to a request with these headers (RFC 9110 §12.5.3): zstd when the
    /// client names it and ranks it at least as high as gzip, else gzip when named or covered by `*`, else
    /// none. zstd must be named: a client that says `*` may predate it.
    pub fn negotiate(headers: &hyper::HeaderMap) -> Coding {
        let (mut gzip, mut zstd, mut any) = (None, None, None);
        let values = headers.get_all(hyper::header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok());
        for part in values.flat_map(|v| v.split(',')) {
            let mut params = part.split(';');
            let coding = params.next().unwrap_or("").trim();
            let Some(q) = quality(params) else { continue };
            let slot = if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                &mut gzip
            } else if coding.eq_ignore_ascii_case("zstd") {
                &mut zstd
            } else if coding == "*" {
                &mut any
            } else {
                continue;
            };
            *slot = Some(q);
        }
        let gzip = gzip.or(any).unwrap_or(0);
        let zstd = zstd.unwrap_or(0);
        if zstd > 0 && zstd >= gzip {
            Coding::Zstd
        } else if gzip > 0 {
            Coding::Gzip
        } else {
            Coding::Identity
        }
    }

    /// Whether answers in this coding take frames made in advance (`AnswerSink::splice_zstd_frame`).
    pub fn takes_zstd_frames(self) -> bool {
        self == Coding::Zstd
    }

    /// The `Content-Encoding` value, if any.
    pub fn header_value(self) -> Option<&'static str> {
        match self {
            Coding::Identity => None,
            Coding::Gzip => Some("gzip"),
            Coding::Zstd => Some("zstd"),
        }
    }
}

/// An Accept-Encoding entry's weight in thousandths (`q=0.5` is 500; no `q` is 1000); `None` when the
/// weight is not a valid qvalue, so that the entry is ignored rather than guessed at.
fn quality<'a>(params: impl Iterator<Item = &'a str>) -> Option<u16> {
    let mut weight = 1000;
    for param in params {
        let Some((name, value)) = param.split_once('=') else { continue };
        if !name.trim().eq_ignore_ascii_case("q") {
            continue;
        }
        let value = value.trim();
        let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
        if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let thousandths =
            fraction.bytes().chain(std::iter::repeat(b'0')).take(3).fold(0u16, |n, b| n * 10 + u16::from(b - b'0'));
        weight = match whole {
            "0" => thousandths,
            "1" if thousandths == 0 => 1000,
            _ => return None,
        };
    }
    Some(weight)
}

/// A zstd compression context, set up for HTTP answers. Making one allocates and clears its tables, so
/// finished ones are kept for the next answer (`ZSTD_CONTEXTS_KEPT` at most).
struct ZstdContext(zstd::zstd_safe::CCtx<'static>);

static ZSTD_CONTEXTS: Mutex<Vec<ZstdContext>> = Mutex::new(Vec::new());
const ZSTD_CONTEXTS_KEPT: usize = 8;

impl ZstdContext {
    fn take() -> io::Result<ZstdContext> {
        let kept = ZSTD_CONTEXTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
        let Some(mut context) = kept else { return ZstdContext::new() };
        // A frame left unfinished by an answer cut short must not become the start of this one. The zstd
        // crate's `with_context` resets the session too; this does not rely on it. Parameters are kept.
        context
            .0
            .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
            .map_err(|code| io::Error::other(format!("zstd reset: {}", zstd::zstd_safe::get_error_name(code))))?;
        Ok(context)
    }

    fn new() -> io::Result<ZstdContext> {
        use zstd::zstd_safe::{CCtx, CParameter};
        let mut context = CCtx::try_create().ok_or_else(|| io::Error::other("no memory for a zstd context"))?;
        let parameters = [
            // Level 1: the fastest of the regular levels, and already smaller than gzip at its fastest.
            CParameter::CompressionLevel(1),
            // Level 1 tries a match at every other position. In bytes that do not compress (a photo's base64,
            // about half of a book with photos) that search is most of zstd's time. Every fifth position costs
            // 1.8 % in size and saves 15 % of the server's instructions per full sync (BENCHMARKS.md,
            // optimization 19). zstd calls the step the target length for this strategy.
            CParameter::TargetLength(4),
            // With a target length zstd stops Huffman-coding literals (its rule for negative levels) unless told
            // otherwise: that alone would make answers 28 % bigger.
            CParameter::LiteralCompressionMode(zstd::zstd_safe::ParamSwitch::Enable),
            // The frame's checksum lets the client tell a damaged answer from a whole one, as gzip's CRC does
            // (the raw frames of a few hundred bytes of markup between spliced frames carry none).
            CParameter::ChecksumFlag(true),
            // RFC 9659 §3: HTTP clients need not accept windows above 8 MB; level 1 uses 512 KB, kept explicit.
            CParameter::WindowLog(19),
        ];
        for parameter in parameters {
            context.set_parameter(parameter).map_err(|code| {
                io::Error::other(format!("zstd parameter: {}", zstd::zstd_safe::get_error_name(code)))
            })?;
        }
        Ok(ZstdContext(context))
    }

    /// Keeps the context for another answer (`take` resets its session).
    fn put_back(self) {
        let mut kept = ZSTD_CONTEXTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if kept.len() < ZSTD_CONTEXTS_KEPT {
            kept.push(self);
        }
    }
}

fn zstd_error(code: usize) -> io::Error {
    io::Error::other(format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))
}

/// A zstd answer: what is written is compressed into the current frame; a spliced frame ends it, and the next
/// write starts a new one (RFC 8878 §3: a zstd stream is one or more frames). Output is handed to the
/// connection in chunks of at least `ANSWER_CHUNK`, so the small frames between spliced ones do not each
/// become a chunk of their own.
struct ZstdWriter<'c> {
    context: &'c mut zstd::zstd_safe::CCtx<'static>,
    out: ChunkWriter,
    /// What zstd produced and was not sent yet.
    pending: Vec<u8>,
    frame_open: bool,
    /// The start of a frame, held back from zstd while it is small (`STAGED_MAX`): between two spliced
    /// frames an answer writes only a response's tags around them, a few hundred bytes, and compressed
    /// alone each cost zstd a block with its own entropy tables (~7 % of the server's instructions per full
    /// sync). Such a piece is sent as a raw frame instead (`push_raw_frame`).
    staged: Vec<u8>,
    /// Frames spliced in, for the debug log (the Thunderbird interop test checks it saw some).
    spliced: usize,
}

const ANSWER_CHUNK: usize = 32 * 1024;

/// The most a frame's start is held back before it goes to zstd (see `ZstdWriter::staged`).
const STAGED_MAX: usize = 1024;

/// Appends `data` as one zstd frame holding one raw (stored) block (RFC 8878 §3.1.1): the magic number, a
/// frame header with the single-segment flag and the content size, and a last block of type Raw. Without
/// a content checksum, which is optional; `data` is at most `STAGED_MAX` bytes.
fn push_raw_frame(out: &mut Vec<u8>, data: &[u8]) {
    debug_assert!(data.len() <= STAGED_MAX);
    out.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    match u8::try_from(data.len()) {
        // Frame_Header_Descriptor: Single_Segment_flag (bit 5); Frame_Content_Size_flag 0 (one byte) or 1
        // (two bytes, the size less 256).
        Ok(size) => out.extend_from_slice(&[0x20, size]),
        Err(_) => {
            out.push(0x60);
            out.extend_from_slice(&((data.len() - 256) as u16).to_le_bytes());
        }
    }
    // Block_Header, three bytes: Last_Block (bit 0), Block_Type 0 = Raw (bits 1-2), Block_Size (bits 3-23).
    let header = 1 | ((data.len() as u32) << 3);
    out.extend_from_slice(&header.to_le_bytes()[..3]);
    out.extend_from_slice(data);
}

impl<'c> ZstdWriter<'c> {
    fn new(context: &'c mut zstd::zstd_safe::CCtx<'static>, out: ChunkWriter) -> Self {
        let pending = Vec::with_capacity(zstd::zstd_safe::CCtx::out_size());
        ZstdWriter { context, out, pending, frame_open: false, staged: Vec::new(), spliced: 0 }
    }

    /// Hands `data` to zstd, in the frame being compressed.
    fn compress_all(&mut self, data: &[u8]) -> io::Result<()> {
        use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_continue;
        let mut input = zstd::zstd_safe::InBuffer::around(data);
        while input.pos() < data.len() {
            self.compress(&mut input, ZSTD_e_continue)?;
        }
        self.frame_open |= !data.is_empty();
        Ok(())
    }

    /// One call into zstd; returns what it still has to flush (for `End`).
    fn compress(
        &mut self,
        input: &mut zstd::zstd_safe::InBuffer<'_>,
        directive: zstd::zstd_safe::zstd_sys::ZSTD_EndDirective,
    ) -> io::Result<usize> {
        if self.pending.capacity() - self.pending.len() < zstd::zstd_safe::CCtx::out_size() / 2 {
            self.pending.reserve(zstd::zstd_safe::CCtx::out_size());
        }
        let start = self.pending.len();
        let mut output = zstd::zstd_safe::OutBuffer::around_pos(&mut self.pending, start);
        let remaining = self.context.compress_stream2(&mut output, input, directive).map_err(zstd_error)?;
        self.send_if_large()?;
        Ok(remaining)
    }

    fn send_if_large(&mut self) -> io::Result<()> {
        if self.pending.len() >= ANSWER_CHUNK {
            self.out.write_all(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Ends the current frame (its last block and checksum), if one was started; a small one still held back
    /// goes out as a raw frame.
    fn end_frame(&mut self) -> io::Result<()> {
        use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_end;
        if !self.staged.is_empty() {
            push_raw_frame(&mut self.pending, &self.staged);
            self.staged.clear();
            return self.send_if_large();
        }
        while self.frame_open {
            let mut nothing = zstd::zstd_safe::InBuffer::around(&[]);
            self.frame_open = self.compress(&mut nothing, ZSTD_e_end)? != 0;
        }
        Ok(())
    }

    /// Ends the answer and sends what is left.
    fn finish(mut self) -> io::Result<ChunkWriter> {
        self.end_frame()?;
        if !self.pending.is_empty() {
            self.out.write_all(&self.pending)?;
        }
        if self.spliced > 0 {
            tracing::debug!(frames = self.spliced, "a zstd answer sent cards from their stored frames");
        }
        Ok(self.out)
    }
}

impl Write for ZstdWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if !self.frame_open && self.staged.len() + data.len() <= STAGED_MAX {
            self.staged.extend_from_slice(data);
            return Ok(data.len());
        }
        if !self.staged.is_empty() {
            // The frame outgrew what is sent raw: zstd compresses it from its start.
            let mut staged = std::mem::take(&mut self.staged);
            self.compress_all(&staged)?;
            staged.clear();
            self.staged = staged; // its allocation is kept for the next piece
        }
        self.compress_all(data)?;
        Ok(data.len())
    }

    /// A zstd flush would end a block early and cost bytes; the answer is flushed when it ends.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AnswerSink for ZstdWriter<'_> {
    fn takes_zstd_frames(&self) -> bool {
        true
    }

    fn splice_zstd_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.end_frame()?;
        self.pending.extend_from_slice(frame);
        self.spliced += 1;
        self.send_if_large()
    }
}

/// Cards whose text is shorter are always compressed with the answer: alone they compress several times worse.
pub const CARD_FRAME_MIN: usize = 4096;

/// The version of how `card_xml_frame` makes frames (which cards, which parameters). A database whose frames
/// were made otherwise, or before frames were stored, gets them made again when it is opened.
pub const CARD_FRAMES_VERSION: &str = "1";

/// A card's text as XML element content (`push_escaped_text`, as in a multistatus) in one zstd frame, made
/// with the answers' parameters; `None` for a card better compressed with the rest of an answer. Only large
/// cards that compress alone to no less than half their size get one: a photo, a key or a sound, whose base64
/// shares nothing with the rest of an answer, so that a frame of their own costs ~4 % in size and saves the
/// server compressing them on every full sync (BENCHMARKS.md, optimization 21).
pub fn card_xml_frame(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() < CARD_FRAME_MIN {
        return None;
    }
    let mut xml = Vec::with_capacity(text.len() + text.len() / 32);
    crate::dav::response::push_escaped_text(&mut xml, text);
    let mut context = ZstdContext::take().ok()?;
    let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(xml.len()));
    let made = context.0.compress2(&mut frame, &xml);
    context.put_back();
    match made {
        Ok(_) if frame.len() * 2 >= xml.len() => Some(frame),
        Ok(_) => None,
        Err(code) => {
            tracing::warn!(error = %zstd::zstd_safe::get_error_name(code), "a card's zstd frame could not be made");
            None
        }
    }
}

/// Whether `frame` is one zstd frame holding exactly `text` as XML element content, as `card_xml_frame` makes
/// it (`kartei check`: an answer would send the frame in place of the card's text).
pub fn card_frame_holds(frame: &[u8], text: &[u8]) -> bool {
    let mut xml = Vec::with_capacity(text.len() + text.len() / 32);
    crate::dav::response::push_escaped_text(&mut xml, text);
    // One frame, not more: the decoder's limit is the expected size, so a longer frame fails too.
    let one_frame = zstd::zstd_safe::find_frame_compressed_size(frame).is_ok_and(|n| n == frame.len());
    one_frame && zstd::bulk::decompress(frame, xml.len()).is_ok_and(|decoded| decoded == xml)
}

/// Runs `produce` on the blocking pool, streaming what it writes as the response body, compressed on the
/// way with `coding`. Errors after the first byte can only cut the body short (and are logged), which is
/// why callers validate everything before they start streaming. A body cut short ends in an error, never
/// cleanly, so that the client cannot take a truncated answer for a whole one (HTTP/1.1 closes the
/// connection without the last chunk, HTTP/2 resets the stream).
pub fn stream_body<F>(streaming: &Streaming, slot: Slot, coding: Coding, produce: F) -> Body
where
    F: FnOnce(&mut dyn AnswerSink) -> io::Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    let complete = Arc::new(AtomicBool::new(false));
    let writer = ChunkWriter { tx, stall: streaming.stall, broken: false };
    let done = complete.clone();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        produce_into(writer, done, coding, produce)
    });
    BodyExt::boxed(StreamBody::new(chunk_stream(rx, complete)))
}

/// The blocking half of `stream_body`. `complete` is set only after the whole answer (with its gzip trailer
/// or zstd epilogue) was handed over, and before the channel's sender is dropped: an error, a panic or an
/// encoder finishing its stream on drop (flate2's does) all leave it unset, so the body ends in an error.
fn produce_into<F>(writer: ChunkWriter, complete: Arc<AtomicBool>, coding: Coding, produce: F)
where
    F: FnOnce(&mut dyn AnswerSink) -> io::Result<()>,
{
    let result = match coding {
        Coding::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(writer, flate2::Compression::fast());
            produce(&mut encoder).and_then(|()| encoder.finish())
        }
        Coding::Zstd => ZstdContext::take().and_then(|mut context| {
            let mut encoder = ZstdWriter::new(&mut context.0, writer);
            let result = produce(&mut encoder).and_then(|()| encoder.finish());
            context.put_back();
            result
        }),
        Coding::Identity => {
            let mut writer = writer;
            produce(&mut writer).map(|()| writer)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_zstd_context_starts_every_answer_afresh() {
        use zstd::zstd_safe::{InBuffer, OutBuffer, zstd_sys::ZSTD_EndDirective};
        // Compresses `input` with the context's own session, as far as `end`; what the context still held
        // from before would come out first.
        fn compress(context: &mut ZstdContext, input: &[u8], end: ZSTD_EndDirective) -> Vec<u8> {
            let mut out = Vec::with_capacity(input.len() + 1024);
            let mut input = InBuffer::around(input);
            let mut output = OutBuffer::around(&mut out);
            while context.0.compress_stream2(&mut output, &mut input, end).expect("compress") != 0 {}
            out
        }
        // An answer cut short leaves its frame unfinished in the context it puts back.
        let mut context = ZstdContext::take().expect("context");
        compress(&mut context, &[b'x'; 300_000], ZSTD_EndDirective::ZSTD_e_continue);
        context.put_back();
        for _ in 0..ZSTD_CONTEXTS_KEPT + 1 {
            let mut context = ZstdContext::take().expect("context");
            let frame = compress(&mut context, b"<multistatus/>", ZSTD_EndDirective::ZSTD_e_end);
            context.put_back();
            assert_eq!(zstd::decode_all(&frame[..]).expect("one whole frame"), b"<multistatus/>");
            // RFC 8878 §3.1.1.1.1: the frame header descriptor after the magic number; bit 2 = checksum.
            assert_ne!(frame[4] & 0b100, 0, "the frame carries a checksum");
        }
        assert!(ZSTD_CONTEXTS.lock().expect("pool").len() <= ZSTD_CONTEXTS_KEPT);
    }

    #[test]
    fn zstd_answers_keep_huffman_coded_literals() {
        // Base64 of random bytes: no matches, six bits of information per byte. Coded literals take ~75 % of it;
        // without them (what the target length alone would bring) it would stay at ~100 %.
        let text = random_base64(0x2545_f491_4f6c_dd1d, 48 * 1024);
        let mut context = ZstdContext::take().expect("context");
        let mut out = Vec::new();
        {
            let mut encoder = zstd::stream::write::Encoder::with_context(&mut out, &mut context.0);
            encoder.write_all(text.as_bytes()).expect("compress");
            encoder.finish().expect("finish");
        }
        assert_eq!(zstd::decode_all(&out[..]).expect("decodes"), text.as_bytes());
        let ratio = out.len() as f64 / text.len() as f64;
        assert!(ratio < 0.8, "compressed to {:.0} % of the text", ratio * 100.0);
    }

    /// Base64 of `bytes` xorshift bytes: a photo's worth of text that no compressor finds a match in.
    fn random_base64(seed: u64, bytes: usize) -> String {
        let mut state = seed | 1;
        let random: Vec<u8> = (0..bytes)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &random)
    }

    #[test]
    fn only_large_cards_that_barely_compress_get_a_frame() {
        let photo =
            format!("BEGIN:VCARD\r\nVERSION:4.0\r\nFN:A <b> & c\r\nPHOTO:{}\r\nEND:VCARD\r\n", random_base64(3, 6000));
        let frame = card_xml_frame(photo.as_bytes()).expect("a photo card gets a frame");
        let mut escaped = Vec::new();
        crate::dav::response::push_escaped_text(&mut escaped, photo.as_bytes());
        assert_eq!(zstd::decode_all(&frame[..]).expect("one whole frame"), escaped, "the card as XML content");
        assert_ne!(frame[4] & 0b100, 0, "with a checksum, like the answers' own frames");
        let small = "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:Small\r\nEND:VCARD\r\n";
        assert_eq!(card_xml_frame(small.as_bytes()), None, "small cards compress better with the answer");
        let note =
            format!("BEGIN:VCARD\r\nVERSION:4.0\r\nFN:Notes\r\nNOTE:{}\r\nEND:VCARD\r\n", "meeting notes ".repeat(600));
        assert_eq!(card_xml_frame(note.as_bytes()), None, "text that compresses well stays with the answer");

        // `kartei check`'s test of a stored frame.
        assert!(card_frame_holds(&frame, photo.as_bytes()));
        let other = photo.replace("FN:A", "FN:B");
        assert!(!card_frame_holds(&frame, other.as_bytes()), "another card's text");
        assert!(!card_frame_holds(&[frame.clone(), frame.clone()].concat(), photo.as_bytes()), "two frames");
        assert!(!card_frame_holds(&frame[..frame.len() - 1], photo.as_bytes()), "a frame cut short");
    }

    /// What a `ZstdWriter` hands to the connection, as one body.
    fn zstd_answer(write: impl FnOnce(&mut ZstdWriter<'_>) -> io::Result<()>) -> Vec<u8> {
        let (tx, mut rx) = mpsc::channel(1024);
        let mut context = ZstdContext::take().expect("context");
        let mut writer =
            ZstdWriter::new(&mut context.0, ChunkWriter { tx, stall: Duration::from_secs(1), broken: false });
        write(&mut writer).expect("written");
        drop(writer.finish().expect("finished"));
        let mut body = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            body.extend_from_slice(chunk.expect("a chunk").data_ref().expect("data"));
        }
        body
    }

    #[test]
    fn spliced_frames_decode_in_their_place() {
        let photo = format!("PHOTO:{}\r\n", random_base64(5, 9000));
        let frame = card_xml_frame(photo.as_bytes()).expect("frame");
        let mut escaped = Vec::new();
        crate::dav::response::push_escaped_text(&mut escaped, photo.as_bytes());
        let head = "<d:multistatus>".repeat(3000);
        let body = zstd_answer(|w| {
            w.write_all(head.as_bytes())?;
            w.splice_zstd_frame(&frame)?;
            w.splice_zstd_frame(&frame)?; // two in a row: no empty frame between them
            w.write_all(b"</x>")?;
            w.splice_zstd_frame(&frame)
        });
        let mut want = head.into_bytes();
        want.extend_from_slice(&escaped);
        want.extend_from_slice(&escaped);
        want.extend_from_slice(b"</x>");
        want.extend_from_slice(&escaped);
        assert_eq!(zstd::decode_all(&body[..]).expect("frame after frame"), want);
        let mut frames = 0;
        let mut at = 0;
        while at < body.len() {
            at += zstd::zstd_safe::find_frame_compressed_size(&body[at..]).expect("a whole frame");
            frames += 1;
        }
        assert_eq!(frames, 5, "the XML, two frames, the XML, a frame");
        // The XML before the first splice outgrew what is held back and was compressed; the `</x>` between
        // two splices went out as a raw frame: header (magic, descriptor, size), block header, the bytes.
        let first = zstd::zstd_safe::find_frame_compressed_size(&body).expect("a frame");
        assert!(first < 3000, "45 KB of repeated tags compress: {first} bytes");
        let raw = [&0xFD2F_B528u32.to_le_bytes()[..], &[0x20, 4], &[1 | (4 << 3), 0, 0], b"</x>"].concat();
        assert!(body.windows(raw.len()).any(|w| w == raw), "a raw frame holds the small piece");
        // Without splices an answer is one frame, as before.
        let plain = zstd_answer(|w| w.write_all(b"<d:multistatus/>"));
        assert_eq!(zstd::zstd_safe::find_frame_compressed_size(&plain), Ok(plain.len()));
    }

    #[test]
    fn raw_frames_are_zstd_frames_of_their_bytes() {
        for len in [1, 17, 255, 256, 257, 1000, STAGED_MAX] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let mut frame = Vec::new();
            push_raw_frame(&mut frame, &data);
            assert_eq!(zstd::zstd_safe::find_frame_compressed_size(&frame), Ok(frame.len()), "{len}");
            assert!(matches!(zstd::zstd_safe::get_frame_content_size(&frame), Ok(Some(n)) if n == len as u64), "{len}");
            assert_eq!(zstd::decode_all(&frame[..]).expect("decodes"), data, "{len}");
        }
        // A whole small answer is one raw frame; a larger one is compressed.
        let small = zstd_answer(|w| w.write_all(b"<d:multistatus/>"));
        assert_eq!(zstd::decode_all(&small[..]).expect("decodes"), b"<d:multistatus/>");
        assert_eq!(small.len(), 4 + 2 + 3 + 16);
        let large = "<d:response/>".repeat(200);
        let body = zstd_answer(|w| w.write_all(large.as_bytes()));
        assert_eq!(zstd::decode_all(&body[..]).expect("decodes"), large.as_bytes());
        assert!(body.len() < large.len() / 4, "{} bytes", body.len());
    }

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
