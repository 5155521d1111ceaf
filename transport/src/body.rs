//! Request bodies that can be sent again, and response bodies that record completion.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use meshless_balancer::{CallStart, EndpointStats};
use tonic::{Code, Status};

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
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut len = 0usize;
        loop {
            if len > REPLAY_LIMIT {
                break;
            }
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        len += data.len();
                        chunks.push(data);
                    }
                    // Request trailers are not used by gRPC; keep such a body as a stream
                    // without them rather than fail the call.
                    Err(_trailers) => break,
                },
                Poll::Ready(None) => {
                    let full = match chunks.len() {
                        0 => Bytes::new(),
                        1 => chunks.pop().unwrap_or_default(),
                        _ => {
                            let mut buf = BytesMut::with_capacity(len);
                            for c in chunks {
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
        Ok(Replay::Stream {
            prefix: chunks.into(),
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
    Stream { prefix: VecDeque<Bytes>, rest: Rest },
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        match self.get_mut() {
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
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Stream { .. } => SizeHint::default(),
        }
    }
}

// ===== impl CallGuard =====

/// Tracks one call on one endpoint from send to the end of its response body. Dropping it
/// records the completion, so a cancelled or abandoned call is counted too.
pub(crate) struct CallGuard {
    stats: Arc<EndpointStats>,
    call: CallStart,
    /// `Some` once the outcome is known.
    ok: Option<bool>,
    abandoned: bool,
}

impl CallGuard {
    pub(crate) fn start(stats: Arc<EndpointStats>) -> Self {
        CallGuard {
            call: stats.start(),
            stats,
            ok: None,
            abandoned: false,
        }
    }

    /// The call never reached the endpoint: undo the start, record nothing.
    pub(crate) fn abandon(mut self) {
        self.abandoned = true;
    }

    pub(crate) fn set_outcome(&mut self, ok: bool) {
        self.ok.get_or_insert(ok);
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.abandoned {
            self.stats.abandon(self.call);
            return;
        }
        // A call dropped before its outcome is known was cancelled by the caller: that says
        // nothing bad about the endpoint.
        self.stats.finish(self.call, self.ok.unwrap_or(true));
    }
}

/// Whether a gRPC status code says the endpoint is unwell, as opposed to the application
/// rejecting the request (NOT_FOUND, INVALID_ARGUMENT, ...), which says nothing about the
/// endpoint's health.
pub(crate) fn counts_against_endpoint(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
            | Code::ResourceExhausted
    )
}

/// The outcome a `grpc-status` header gives, if it has one.
pub(crate) fn outcome_of(headers: &HeaderMap) -> Option<bool> {
    let v = headers.get("grpc-status")?;
    let code = v.to_str().ok()?.parse::<i32>().ok()?;
    Some(!counts_against_endpoint(Code::from_i32(code)))
}

// ===== impl TrackedBody =====

pin_project_lite::pin_project! {
    /// A response body that records the call's completion when it ends.
    pub(crate) struct TrackedBody {
        #[pin]
        inner: hyper::body::Incoming,
        guard: Option<CallGuard>,
    }
}

impl TrackedBody {
    pub(crate) fn new(inner: hyper::body::Incoming, guard: CallGuard) -> Self {
        TrackedBody {
            inner,
            guard: Some(guard),
        }
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll_frame(cx));
        match &res {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(mut g) = this.guard.take()
                {
                    g.set_outcome(outcome_of(trailers).unwrap_or(false));
                }
            }
            Some(Err(_)) => {
                if let Some(mut g) = this.guard.take() {
                    g.set_outcome(false);
                }
            }
            // The end. A trailers-only response set its outcome from the headers; a gRPC
            // response that ends with no status at all is broken.
            None => {
                if let Some(mut g) = this.guard.take() {
                    g.set_outcome(false);
                }
            }
        }
        Poll::Ready(res)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
