//! What one call tells its endpoint's statistics, and the response body that tells it.
//!
//! Three signals, each at its own moment: the latency sample when the response headers
//! arrive (so a long-lived stream never reads as a slow endpoint), the call in flight until
//! its response body ends or is dropped, and the outcome from the trailers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use meshless_balancer::{CallStart, FailureCodes, Outcome};
use tokio::time::Instant;
use tonic::Status;

use crate::channel::ChannelPermit;
use crate::control::Shared;
use crate::errors::{chain, code_of, grpc_status, sanitize_status_details};
use crate::subchannel::{Conn, Subchannel};

/// A call's stream on a connection whose server limits concurrent streams: when the call
/// ends, calls waiting for a free stream are told.
pub(crate) struct StreamSlot {
    shared: Arc<Shared>,
    max: u64,
}

impl StreamSlot {
    /// The slot for a call on `conn`, bounded by the server's stream limit and the channel's
    /// per-endpoint cap; `None` when neither applies.
    pub(crate) fn of(shared: &Arc<Shared>, _sub: &Subchannel, conn: &Conn) -> Option<Self> {
        let streams = (conn.max_streams != u32::MAX).then_some(u64::from(conn.max_streams));
        let max = match (streams, shared.limits.per_endpoint) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(StreamSlot {
            shared: shared.clone(),
            max,
        })
    }
}

// ===== impl CallGuard =====

/// Tracks one call on one endpoint from send to the end of its response body. Dropping it
/// ends the call on the endpoint's statistics, so a cancelled or abandoned call is counted
/// too.
pub(crate) struct CallGuard {
    /// The endpoint's subchannel: its statistics, and its latency instrument with metrics on.
    sub: Arc<crate::subchannel::Subchannel>,
    codes: FailureCodes,
    call: CallStart,
    outcome: Option<Outcome>,
    /// The call's own deadline: a call dropped at or after it was ended by that deadline,
    /// which counts against the endpoint; one dropped before it was given up by the caller.
    deadline: Option<Instant>,
    abandoned: bool,
    slot: Option<StreamSlot>,
    /// The call's place under the channel's cap, held until the call ends.
    _permit: Option<ChannelPermit>,
    /// What the instruments record of this attempt, when metrics are on.
    attempt: Option<Box<AttemptMetrics>>,
}

/// An attempt as the A66 instruments see it.
struct AttemptMetrics {
    method: crate::Label,
    /// Before the attempt's pick: A66 counts the time to pick an endpoint in the attempt.
    start: Instant,
    /// Request message bytes, without gRPC's 5-byte message prefixes.
    sent: crate::replay::SentBytes,
    /// Response message bytes, without the prefixes.
    rcvd: crate::frame_limit::MessageBytes,
    code: Option<tonic::Code>,
    /// The call's clock, when the call ends with this attempt (A66's call duration).
    call: Option<crate::channel::CallClock>,
}

impl CallGuard {
    /// Starts a call on `stats`; `None` when the connection's stream limit is reached (the
    /// check and the count are one atomic step).
    pub(crate) fn start(
        sub: Arc<crate::subchannel::Subchannel>,
        codes: FailureCodes,
        deadline: Option<Instant>,
        slot: Option<StreamSlot>,
    ) -> Option<Self> {
        let call = match &slot {
            Some(s) => sub.stats.try_start(s.max)?,
            None => sub.stats.start(),
        };
        Some(CallGuard {
            call,
            sub,
            codes,
            outcome: None,
            deadline,
            abandoned: false,
            slot,
            _permit: None,
            attempt: None,
        })
    }

    /// The call never reached the endpoint: undo the start, record nothing.
    pub(crate) fn abandon(mut self) {
        self.abandoned = true;
    }

    /// The response headers arrived; `headers` are they, and a `grpc-status` among them
    /// makes this a Trailers-Only response whose outcome is known now.
    pub(crate) fn responded(&mut self, status: http::StatusCode, headers: &http::HeaderMap) {
        let outcome = if status != http::StatusCode::OK {
            self.set_code(tonic::Code::Unknown);
            Some(Outcome::Failure)
        } else {
            let code = grpc_status(headers);
            if let Some(c) = code {
                self.set_code(c);
            }
            code.map(|c| self.codes.outcome(c))
        };
        self.sub
            .stats
            .respond(&mut self.call, outcome == Some(Outcome::Failure));
        if let Some(o) = outcome {
            self.set_outcome(o);
        }
    }

    /// Records this attempt in `metrics` (A66): started at `start` (before its pick), its
    /// request message bytes `sent`.
    pub(crate) fn observe(
        &mut self,
        metrics: &crate::Recorder,
        method: crate::Label,
        sent: crate::replay::SentBytes,
        start: Instant,
    ) {
        metrics.attempt_started(&method);
        self.attempt = Some(Box::new(AttemptMetrics {
            method,
            start,
            sent,
            rcvd: crate::frame_limit::MessageBytes::default(),
            code: None,
            call: None,
        }));
    }

    /// The call ends with this attempt's response: its duration is recorded with it.
    pub(crate) fn end_call_with(&mut self, clock: Option<crate::channel::CallClock>) {
        if let (Some(a), Some(clock)) = (&mut self.attempt, clock) {
            a.call = Some(clock);
        }
    }

    /// The attempt's status code, once known (the first one given wins).
    pub(crate) fn set_code(&mut self, code: tonic::Code) {
        if let Some(a) = &mut self.attempt {
            a.code.get_or_insert(code);
        }
    }

    /// Response bytes received (their message prefixes are left out).
    fn add_rcvd(&mut self, data: &[u8]) {
        if let Some(a) = &mut self.attempt {
            a.rcvd.feed(data);
        }
    }

    /// Keeps the call's place under the channel's cap until the call ends.
    pub(crate) fn hold(&mut self, permit: Option<ChannelPermit>) {
        self._permit = permit;
    }

    pub(crate) fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome.get_or_insert(outcome);
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.abandoned {
            self.sub.stats.abandon(self.call);
        } else {
            let outcome = self.outcome.unwrap_or_else(|| {
                if self.deadline.is_some_and(|d| Instant::now() >= d) {
                    Outcome::Failure
                } else {
                    Outcome::Cancelled
                }
            });
            self.sub.stats.end(self.call, outcome);
            if let Some(a) = self.attempt.take() {
                let code = a.code.unwrap_or(match outcome {
                    Outcome::Cancelled => tonic::Code::Cancelled,
                    Outcome::Failure => tonic::Code::DeadlineExceeded,
                    Outcome::Success => tonic::Code::Unknown,
                });
                let elapsed = a.start.elapsed();
                if let Some(latency) = &self.sub.latency {
                    latency.record(elapsed.as_secs_f64());
                }
                crate::Recorder::attempt_ended(
                    &a.method,
                    code,
                    elapsed,
                    a.sent.get(),
                    a.rcvd.total(),
                );
                if let Some(call) = a.call {
                    call.end(code);
                }
            }
        }
        if let Some(slot) = &self.slot
            && self.sub.stats.in_flight() + 1 >= slot.max
        {
            // It was at the limit: a stream is free now.
            slot.shared.capacity.notify_waiters();
        }
    }
}

// ===== impl TrackedBody =====

pin_project_lite::pin_project! {
    /// A response body that ends its call when it ends, takes the outcome from the trailers,
    /// and turns transport errors into gRPC statuses itself.
    pub(crate) struct TrackedBody {
        #[pin]
        inner: crate::h2client::H2Body,
        guard: Option<CallGuard>,
        // The method's response message limit, when it has one.
        limit: Option<crate::frame_limit::FrameCheck>,
        // The call's deadline, armed the first time the body has to wait: the deadline
        // bounds the whole call, its body too, as in grpc-go, so a peer that stops
        // mid-response (a frozen network after the headers) cannot hold the caller past it.
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl TrackedBody {
    pub(crate) fn new(inner: crate::h2client::H2Body, guard: CallGuard) -> Self {
        TrackedBody {
            inner,
            guard: Some(guard),
            limit: None,
            timer: None,
        }
    }

    /// Fails the call when a response message is over `limit` bytes.
    pub(crate) fn limit_messages(mut self, limit: usize) -> Self {
        self.limit = Some(crate::frame_limit::FrameCheck::new(limit));
        self
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        let res = match this.inner.poll_frame(cx) {
            Poll::Ready(res) => res,
            Poll::Pending => {
                // Only a body that waits pays for a timer.
                let deadline = this.guard.as_ref().and_then(|g| g.deadline);
                if let Some(at) = deadline {
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    if timer.as_mut().poll(cx).is_ready() {
                        let status = Status::deadline_exceeded(
                            "the call's deadline passed while its response was still arriving",
                        );
                        if let Some(mut g) = this.guard.take() {
                            // Our own deadline: it counts against the endpoint.
                            g.set_code(status.code());
                            g.set_outcome(Outcome::Failure);
                        }
                        return Poll::Ready(Some(Err(status)));
                    }
                }
                return Poll::Pending;
            }
        };
        Poll::Ready(match res {
            Some(Ok(mut frame)) => {
                if let Some(trailers) = frame.trailers_mut() {
                    sanitize_status_details(trailers);
                }
                if let (Some(data), Some(g)) = (frame.data_ref(), this.guard.as_mut()) {
                    g.add_rcvd(data);
                }
                if let (Some(data), Some(check)) = (frame.data_ref(), this.limit.as_mut())
                    && let Err(len) = check.feed(data)
                {
                    let status = check.status("response", len);
                    if let Some(mut g) = this.guard.take() {
                        // A limit of this client's, not a fault of the endpoint.
                        g.set_code(status.code());
                        g.set_outcome(Outcome::Cancelled);
                    }
                    *this.limit = None;
                    return Poll::Ready(Some(Err(status)));
                }
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(mut g) = this.guard.take()
                {
                    // A gRPC response that ends with no status at all is broken.
                    let code = grpc_status(trailers);
                    g.set_code(code.unwrap_or(tonic::Code::Unknown));
                    let outcome = code.map_or(Outcome::Failure, |c| g.codes.outcome(c));
                    g.set_outcome(outcome);
                }
                Some(Ok(frame))
            }
            Some(Err(err)) => {
                // A stream reset or a connection lost mid-body: mapped here, so the code
                // does not depend on tonic's cargo features.
                let code = code_of(&err, false);
                if let Some(mut g) = this.guard.take() {
                    g.set_code(code);
                    // A transport failure counts against the endpoint whatever the codes.
                    g.set_outcome(if code == tonic::Code::Cancelled {
                        Outcome::Cancelled
                    } else {
                        Outcome::Failure
                    });
                }
                Some(Err(Status::new(
                    code,
                    format!("response body failed: {}", chain(&err)),
                )))
            }
            // The end. A Trailers-Only response set its outcome from the headers; a gRPC
            // response that ends with no status at all is broken.
            None => {
                if let Some(mut g) = this.guard.take() {
                    g.set_code(tonic::Code::Unknown);
                    g.set_outcome(Outcome::Failure);
                }
                None
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
