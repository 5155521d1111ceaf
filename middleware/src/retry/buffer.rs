//! Request bodies kept for another attempt, within a bound per call and per channel.
//!
//! A unary or server-streaming request is complete when the call starts: it is kept as one
//! buffer, and every attempt sends a clone of it. A client-streaming request is sent as it is
//! produced and recorded on the way ("teed"), so a retry replays what was sent and then goes
//! on with the rest. A request that outgrows its bound, or meets a channel whose bound is
//! taken, is sent once: the call is committed.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

/// Default bound on the request bytes kept per call: 256 KiB (gRPC's per-RPC buffer limit).
pub const DEFAULT_PER_CALL_BUFFER: usize = 256 * 1024;
/// Default bound on the request bytes kept by all calls of a channel: 16 MiB (gRPC's
/// per-channel `retryBufferSize`).
pub const DEFAULT_PER_CHANNEL_BUFFER: usize = 16 * 1024 * 1024;

/// The bytes all calls of a channel keep for replay.
#[derive(Debug)]
pub(crate) struct Pool {
    used: AtomicUsize,
    limit: usize,
}

impl Pool {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Pool {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes kept now, for tests and status.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Bytes of a [`Pool`] held by one call; given back on drop.
#[derive(Debug)]
struct Reservation {
    pool: Arc<Pool>,
    bytes: usize,
}

impl Reservation {
    fn empty(pool: &Arc<Pool>) -> Self {
        Reservation {
            pool: pool.clone(),
            bytes: 0,
        }
    }

    /// Takes `n` more bytes if the pool has them.
    fn grow(&mut self, n: usize) -> bool {
        let pool = &self.pool;
        let ok = pool
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= pool.limit)
            })
            .is_ok();
        if ok {
            self.bytes += n;
        }
        ok
    }

    fn release(&mut self) {
        self.pool.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.bytes = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release();
    }
}

/// A complete request kept for every attempt.
pub(crate) struct Kept {
    bytes: Bytes,
    _reservation: Reservation,
}

/// A streaming request, recorded as it is sent.
pub(crate) struct Tee {
    chunks: Vec<Bytes>,
    len: usize,
    rest: Option<tonic::body::Body>,
    /// The request ended (every frame is in `chunks`).
    ended: bool,
    /// The attempt allowed to read on from `rest`.
    active: u32,
    /// How far the active attempt has read.
    active_pos: usize,
    /// No further attempt may replay this body (outgrown, failed or committed).
    broken: bool,
    per_call: usize,
    reservation: Reservation,
}

impl Tee {
    fn forget(&mut self) {
        self.chunks = Vec::new();
        self.reservation.release();
    }
}

fn lock(tee: &Mutex<Tee>) -> MutexGuard<'_, Tee> {
    // Every change under the lock leaves the record consistent.
    tee.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A call's request body, as far as further attempts are concerned.
pub(crate) enum Buffered {
    Kept(Arc<Kept>),
    Tee(Arc<Mutex<Tee>>),
    /// Sent once; `None` once the attempt took it.
    Once(Option<AttemptBody>),
}

impl Buffered {
    /// Reads what `body` has ready at once, within `per_call` bytes and what `pool` has
    /// left. A body that fails at once (a message that could not be encoded) is that error.
    pub(crate) fn new(
        mut body: tonic::body::Body,
        per_call: usize,
        pool: &Arc<Pool>,
    ) -> Result<Buffered, Status> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut chunks: VecDeque<Bytes> = VecDeque::new();
        let mut len = 0usize;
        let ended = loop {
            if len > per_call {
                // Too large to keep: sent once.
                return Ok(Buffered::Once(Some(AttemptBody::Chained {
                    prefix: chunks,
                    rest: Some(body),
                })));
            }
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        len += data.len();
                        chunks.push_back(data);
                    }
                    // gRPC sends no request trailers; such a body is sent once, unchanged
                    // from here on.
                    Err(_trailers) => {
                        return Ok(Buffered::Once(Some(AttemptBody::Chained {
                            prefix: chunks,
                            rest: Some(body),
                        })));
                    }
                },
                Poll::Ready(None) => break true,
                Poll::Ready(Some(Err(status))) => return Err(status),
                Poll::Pending => break false,
            }
        };
        let mut reservation = Reservation::empty(pool);
        if len > per_call || !reservation.grow(len) {
            return Ok(Buffered::Once(Some(AttemptBody::Chained {
                prefix: chunks,
                rest: (!ended).then_some(body),
            })));
        }
        if ended {
            let bytes = match chunks.len() {
                0 => Bytes::new(),
                1 => chunks.pop_front().unwrap_or_default(),
                _ => {
                    let mut buf = BytesMut::with_capacity(len);
                    for c in chunks {
                        buf.extend_from_slice(&c);
                    }
                    buf.freeze()
                }
            };
            return Ok(Buffered::Kept(Arc::new(Kept {
                bytes,
                _reservation: reservation,
            })));
        }
        Ok(Buffered::Tee(Arc::new(Mutex::new(Tee {
            chunks: chunks.into(),
            len,
            rest: Some(body),
            ended: false,
            active: 0,
            active_pos: 0,
            broken: false,
            per_call,
            reservation,
        }))))
    }

    /// Whether another attempt could send this body again.
    pub(crate) fn replayable(&self) -> bool {
        match self {
            Buffered::Kept(_) => true,
            Buffered::Tee(tee) => !lock(tee).broken,
            Buffered::Once(_) => false,
        }
    }

    /// The body of attempt `n` (from 0), or `None` when it cannot be sent again.
    pub(crate) fn attempt(&mut self, n: u32) -> Option<AttemptBody> {
        match self {
            Buffered::Kept(kept) => Some(AttemptBody::Kept {
                bytes: Some(kept.bytes.clone()),
                _kept: kept.clone(),
            }),
            Buffered::Tee(tee) => {
                let mut t = lock(tee);
                if t.broken {
                    return None;
                }
                t.active = n;
                t.active_pos = 0;
                drop(t);
                Some(AttemptBody::Tee {
                    tee: tee.clone(),
                    attempt: n,
                    pos: 0,
                })
            }
            Buffered::Once(body) => body.take(),
        }
    }

    /// The call is committed: nothing more needs keeping. What the active attempt has
    /// already sent is given back now, the rest as soon as it has been sent.
    pub(crate) fn commit(&mut self) {
        match self {
            Buffered::Kept(_) => *self = Buffered::Once(None),
            Buffered::Tee(tee) => {
                let mut t = lock(tee);
                t.broken = true;
                if t.active_pos >= t.chunks.len() {
                    t.forget();
                }
            }
            Buffered::Once(_) => {}
        }
    }
}

/// The body of one attempt.
pub(crate) enum AttemptBody {
    Kept {
        bytes: Option<Bytes>,
        /// Holds the call's reservation until every attempt body is gone.
        _kept: Arc<Kept>,
    },
    Chained {
        prefix: VecDeque<Bytes>,
        rest: Option<tonic::body::Body>,
    },
    Tee {
        tee: Arc<Mutex<Tee>>,
        attempt: u32,
        pos: usize,
    },
}

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        match self.get_mut() {
            AttemptBody::Kept { bytes, .. } => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            AttemptBody::Chained { prefix, rest } => {
                if let Some(b) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                match rest {
                    Some(body) => Pin::new(body).poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
            AttemptBody::Tee { tee, attempt, pos } => poll_tee(tee, *attempt, pos, cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AttemptBody::Kept { bytes, .. } => bytes.as_ref().is_none_or(|b| b.is_empty()),
            AttemptBody::Chained { prefix, rest } => {
                prefix.is_empty() && rest.as_ref().is_none_or(|r| r.is_end_stream())
            }
            AttemptBody::Tee { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AttemptBody::Kept { bytes, .. } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            _ => SizeHint::default(),
        }
    }
}

fn poll_tee(
    tee: &Mutex<Tee>,
    attempt: u32,
    pos: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
    let mut t = lock(tee);
    let active = t.active == attempt;
    if let Some(chunk) = t.chunks.get(*pos).cloned() {
        *pos += 1;
        if active {
            t.active_pos = *pos;
            if t.broken && *pos >= t.chunks.len() {
                // Committed, and every kept chunk is sent: nothing to keep any more.
                t.forget();
            }
        }
        return Poll::Ready(Some(Ok(Frame::data(chunk))));
    }
    if t.ended {
        return Poll::Ready(None);
    }
    if !active {
        return Poll::Ready(Some(Err(Status::cancelled(
            "request stream superseded by a later attempt",
        ))));
    }
    let Some(rest) = t.rest.as_mut() else {
        return Poll::Ready(None);
    };
    match Pin::new(rest).poll_frame(cx) {
        Poll::Ready(Some(Ok(frame))) => {
            if let Some(data) = frame.data_ref() {
                let data = data.clone();
                let fits = t.len + data.len() <= t.per_call;
                if !t.broken && fits && t.reservation.grow(data.len()) {
                    t.len += data.len();
                    t.chunks.push(data);
                    *pos += 1;
                    t.active_pos = *pos;
                } else if !t.broken {
                    // Outgrew its bound: this attempt is the last; nothing to keep.
                    t.broken = true;
                    t.forget();
                }
            }
            Poll::Ready(Some(Ok(frame)))
        }
        Poll::Ready(None) => {
            t.ended = true;
            t.rest = None;
            Poll::Ready(None)
        }
        Poll::Ready(Some(Err(status))) => {
            t.broken = true;
            t.forget();
            Poll::Ready(Some(Err(status)))
        }
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn full(b: &'static [u8]) -> tonic::body::Body {
        tonic::body::Body::new(
            http_body_util::Full::new(Bytes::from_static(b)).map_err(|e| match e {}),
        )
    }

    async fn collect(body: AttemptBody) -> Result<Vec<u8>, Status> {
        Ok(body.collect().await?.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn a_complete_body_is_kept_within_both_bounds() {
        let pool = Pool::new(10);
        let mut b = Buffered::new(full(b"hello"), 8, &pool).unwrap();
        assert!(b.replayable());
        assert_eq!(pool.used(), 5);
        for n in 0..3 {
            assert_eq!(collect(b.attempt(n).unwrap()).await.unwrap(), b"hello");
        }
        b.commit();
        assert!(!b.replayable());
        drop(b);
        assert_eq!(pool.used(), 0, "given back");

        // Over the per-call bound, or over what the channel has left: sent once.
        let mut big = Buffered::new(full(b"0123456789"), 8, &pool).unwrap();
        assert!(!big.replayable());
        assert_eq!(
            collect(big.attempt(0).unwrap()).await.unwrap(),
            b"0123456789"
        );
        assert!(big.attempt(1).is_none());
        let _hold = Buffered::new(full(b"1234567"), 8, &pool).unwrap();
        let starved = Buffered::new(full(b"abcd"), 8, &pool).unwrap();
        assert!(!starved.replayable(), "the channel's 10 bytes are taken");
    }

    #[tokio::test]
    async fn a_stream_is_recorded_and_replayed_then_continued() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Status>>(4);
        let stream =
            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let pool = Pool::new(1 << 20);
        let mut b = Buffered::new(tonic::body::Body::new(stream), 1024, &pool).unwrap();
        assert!(matches!(b, Buffered::Tee(_)));
        let mut first = b.attempt(0).unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"ab"))))
            .await
            .unwrap();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        // The first attempt failed; the second replays "ab", then reads on.
        let second = b.attempt(1).unwrap();
        assert!(first.frame().await.unwrap().is_err(), "superseded");
        tx.send(Ok(Frame::data(Bytes::from_static(b"cd"))))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(collect(second).await.unwrap(), b"abcd");
        assert_eq!(pool.used(), 4);
        let third = b.attempt(2).unwrap();
        assert_eq!(
            collect(third).await.unwrap(),
            b"abcd",
            "the whole stream is kept"
        );
        b.commit();
        assert_eq!(pool.used(), 0);
    }

    #[tokio::test]
    async fn a_stream_that_outgrows_its_bound_is_sent_once() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Status>>(4);
        let stream =
            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let pool = Pool::new(1 << 20);
        let mut b = Buffered::new(tonic::body::Body::new(stream), 3, &pool).unwrap();
        let first = b.attempt(0).unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"ab"))))
            .await
            .unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"cd"))))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(collect(first).await.unwrap(), b"abcd", "sent whole");
        assert!(!b.replayable());
        assert!(b.attempt(1).is_none());
        assert_eq!(pool.used(), 0);
    }
}
