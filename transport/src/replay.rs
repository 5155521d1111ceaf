//! Request bodies that can be sent again, for gRPC transparent retry.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

use crate::frame_limit::MessageBytes;

/// Request bodies up to this size are kept so that a call the server never processed can be
/// sent again (gRPC transparent retry). Unary calls almost always fit.
pub(crate) const REPLAY_LIMIT: usize = 64 * 1024;

// ===== impl Replay =====

/// What a call's request body is, once the part that was ready at once has been read.
pub(crate) enum Replay {
    /// The whole body, already complete: it can be sent any number of times.
    Full(Bytes),
    /// A body still being produced (client streaming), or too large to keep: the part read
    /// so far, and the rest, which can be sent again only until something polls it.
    Stream {
        prefix: Arc<[Bytes]>,
        rest: Arc<Mutex<Option<tonic::body::Body>>>,
    },
}

impl Replay {
    /// Reads what `body` has ready without waiting, up to [`REPLAY_LIMIT`] bytes. A body that
    /// fails at once (a message that could not be encoded) is that failure.
    pub(crate) fn new(mut body: tonic::body::Body) -> Result<Replay, Status> {
        let mut cx = Context::from_waker(Waker::noop());
        // A unary body is one chunk: it is kept as it is, with no list allocated for it.
        let mut first: Option<Bytes> = None;
        let mut more: Vec<Bytes> = Vec::new();
        let mut len = 0usize;
        loop {
            if len > REPLAY_LIMIT {
                break;
            }
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        len += data.len();
                        match first {
                            None => first = Some(data),
                            Some(_) => more.push(data),
                        }
                    }
                    // Request trailers are not used by gRPC; keep such a body as a stream
                    // without them rather than fail the call.
                    Err(_trailers) => break,
                },
                Poll::Ready(None) => {
                    let full = match (first, more.is_empty()) {
                        (None, _) => Bytes::new(),
                        (Some(one), true) => one,
                        (Some(one), false) => {
                            let mut buf = BytesMut::with_capacity(len);
                            buf.extend_from_slice(&one);
                            for c in more {
                                buf.extend_from_slice(&c);
                            }
                            buf.freeze()
                        }
                    };
                    return Ok(Replay::Full(full));
                }
                Poll::Ready(Some(Err(status))) => return Err(status),
                // Not complete yet: send what we have, then the rest.
                Poll::Pending => break,
            }
        }
        let prefix: Arc<[Bytes]> = first.into_iter().chain(more).collect();
        Ok(Replay::Stream {
            prefix,
            rest: Arc::new(Mutex::new(Some(body))),
        })
    }

    /// A body for one attempt, or `None` when the original body was already consumed by an
    /// earlier attempt and cannot be sent again.
    pub(crate) fn attempt(&self) -> Option<ReqBody> {
        match self {
            Replay::Full(b) => Some(ReqBody::Full(Some(b.clone()))),
            Replay::Stream { prefix, rest } => {
                let still_there = rest.lock().map(|r| r.is_some()).unwrap_or(false);
                still_there.then(|| ReqBody::Stream {
                    prefix: prefix.iter().cloned().collect(),
                    rest: Rest::Shared(rest.clone()),
                })
            }
        }
    }

    /// As [`attempt`](Self::attempt), with the attempt's request message bytes (A66): known
    /// now for a whole body, counted as they are sent for a stream (every message of a
    /// client-streaming call).
    pub(crate) fn attempt_counted(&self) -> Option<(ReqBody, SentBytes)> {
        let body = self.attempt()?;
        Some(match (self, body) {
            (Replay::Full(b), body) => (body, SentBytes::Known(MessageBytes::of(b))),
            (Replay::Stream { .. }, body) => {
                let total = Arc::new(AtomicU64::new(0));
                let counted = ReqBody::Counted(Box::new(Counted {
                    inner: body,
                    bytes: MessageBytes::default(),
                    total: total.clone(),
                }));
                (counted, SentBytes::Counted(total))
            }
        })
    }
}

/// An attempt's request message bytes, without gRPC's framing.
#[derive(Debug)]
pub(crate) enum SentBytes {
    /// A whole body, measured before it was sent.
    Known(u64),
    /// A stream's, as far as it has been sent.
    Counted(Arc<AtomicU64>),
}

impl SentBytes {
    /// The bytes sent so far.
    pub(crate) fn get(&self) -> u64 {
        match self {
            SentBytes::Known(n) => *n,
            SentBytes::Counted(n) => n.load(Ordering::Relaxed),
        }
    }
}

/// A streamed body whose message bytes are counted as they go.
pub(crate) struct Counted {
    inner: ReqBody,
    bytes: MessageBytes,
    total: Arc<AtomicU64>,
}

pub(crate) enum Rest {
    /// Not polled yet: still takeable by a retry.
    Shared(Arc<Mutex<Option<tonic::body::Body>>>),
    /// Taken by this attempt.
    Owned(tonic::body::Body),
    Gone,
}

/// The body of one attempt of a call.
pub(crate) enum ReqBody {
    Full(Option<Bytes>),
    Stream {
        prefix: VecDeque<Bytes>,
        rest: Rest,
    },
    /// A stream whose message bytes are counted (metrics on).
    Counted(Box<Counted>),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        match self.get_mut() {
            ReqBody::Counted(c) => {
                let res = std::task::ready!(Pin::new(&mut c.inner).poll_frame(cx));
                if let Some(Ok(frame)) = &res
                    && let Some(data) = frame.data_ref()
                {
                    c.bytes.feed(data);
                    c.total.store(c.bytes.total(), Ordering::Relaxed);
                }
                Poll::Ready(res)
            }
            ReqBody::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| b.has_remaining())
                    .map(|b| Ok(Frame::data(b))),
            ),
            ReqBody::Stream { prefix, rest } => {
                if let Some(b) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                loop {
                    match rest {
                        Rest::Owned(body) => return Pin::new(body).poll_frame(cx),
                        Rest::Shared(slot) => {
                            let taken = slot.lock().ok().and_then(|mut s| s.take());
                            *rest = match taken {
                                Some(body) => Rest::Owned(body),
                                None => Rest::Gone,
                            };
                        }
                        Rest::Gone => {
                            return Poll::Ready(Some(Err(Status::internal(
                                "request body was consumed by an earlier attempt",
                            ))));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Full(b) => b.as_ref().is_none_or(|b| !b.has_remaining()),
            ReqBody::Stream { .. } => false,
            ReqBody::Counted(c) => c.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Stream { .. } => SizeHint::default(),
            ReqBody::Counted(c) => c.inner.size_hint(),
        }
    }
}
