//! gRPC's per-method message size limits (service config `maxRequestMessageBytes` and
//! `maxResponseMessageBytes`): the length prefix of every message is read as the body passes,
//! and a message over the limit fails the call with RESOURCE_EXHAUSTED.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

/// Message size limits for one call, as a request extension: a request message over
/// `request` bytes fails the call before it is sent; a response message over `response`
/// fails it when its length prefix arrives. Both RESOURCE_EXHAUSTED, as in gRPC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaxMessageBytes {
    /// The largest request message, in bytes.
    pub request: Option<usize>,
    /// The largest response message, in bytes.
    pub response: Option<usize>,
}

/// gRPC's framing read as bytes pass: each message is 1 flag byte, a 4-byte big-endian
/// length, then the message.
#[derive(Debug, Clone, Default)]
struct Framing {
    /// The current message's prefix, as far as it has passed.
    header: [u8; 5],
    have: usize,
    /// Bytes of the current message still to pass.
    remaining: u64,
}

impl Framing {
    /// Feeds `data`, calling `on_prefix` with each message's length once its prefix has
    /// passed (its `Err` stops the reading and is returned); returns how many message bytes,
    /// prefixes left out, passed.
    fn feed(
        &mut self,
        mut data: &[u8],
        mut on_prefix: impl FnMut(u64) -> Result<(), u64>,
    ) -> Result<u64, u64> {
        let mut message_bytes = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining as usize).min(data.len());
                self.remaining -= n as u64;
                message_bytes += n as u64;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                let [_, a, b, c, d] = self.header;
                let len = u64::from(u32::from_be_bytes([a, b, c, d]));
                on_prefix(len)?;
                self.have = 0;
                self.remaining = len;
            }
        }
        Ok(message_bytes)
    }
}

/// Reads gRPC's framing as bytes pass, and says when a message is over the limit.
#[derive(Debug, Clone)]
pub(crate) struct FrameCheck {
    limit: usize,
    framing: Framing,
}

impl FrameCheck {
    pub(crate) fn new(limit: usize) -> Self {
        FrameCheck {
            limit,
            framing: Framing::default(),
        }
    }

    /// Feeds `data`; `Err(length)` for a message over the limit.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<(), u64> {
        let limit = self.limit as u64;
        self.framing
            .feed(data, |len| if len > limit { Err(len) } else { Ok(()) })
            .map(drop)
    }

    pub(crate) fn status(&self, what: &str, len: u64) -> Status {
        Status::resource_exhausted(format!(
            "{what} message of {len} bytes is over the limit of {} (max{}MessageBytes)",
            self.limit,
            if what == "request" {
                "Request"
            } else {
                "Response"
            }
        ))
    }
}

/// Counts the message bytes of a gRPC body as it passes, without the 5-byte prefix (flag and
/// length) of each message: A66's message sizes leave out gRPC and transport framing.
#[derive(Debug, Clone, Default)]
pub(crate) struct MessageBytes {
    framing: Framing,
    total: u64,
}

impl MessageBytes {
    /// Feeds the next bytes of the body.
    pub(crate) fn feed(&mut self, data: &[u8]) {
        self.total += self.framing.feed(data, |_| Ok(())).unwrap_or(0);
    }

    /// The message bytes seen so far.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// The message bytes of a whole body.
    pub(crate) fn of(body: &[u8]) -> u64 {
        let mut m = MessageBytes::default();
        m.feed(body);
        m.total
    }
}

pin_project_lite::pin_project! {
    /// A request body whose messages are checked against the request limit.
    pub(crate) struct CheckedRequest {
        #[pin]
        inner: tonic::body::Body,
        check: FrameCheck,
        failed: bool,
    }
}

impl CheckedRequest {
    pub(crate) fn new(inner: tonic::body::Body, limit: usize) -> Self {
        CheckedRequest {
            inner,
            check: FrameCheck::new(limit),
            failed: false,
        }
    }
}

impl Body for CheckedRequest {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        let res = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &res
            && let Some(data) = frame.data_ref()
            && let Err(len) = this.check.feed(data)
        {
            *this.failed = true;
            return Poll::Ready(Some(Err(this.check.status("request", len))));
        }
        Poll::Ready(res)
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend(std::iter::repeat_n(7u8, len as usize));
        v
    }

    #[test]
    fn messages_are_measured_across_chunk_boundaries() {
        let mut c = FrameCheck::new(10);
        let mut bytes = frame(10);
        bytes.extend(frame(3));
        // One byte at a time: the prefixes are split too.
        for b in &bytes {
            assert!(c.feed(std::slice::from_ref(b)).is_ok());
        }
        let mut c = FrameCheck::new(10);
        let big = frame(11);
        assert_eq!(c.feed(&big[..3]), Ok(()));
        assert_eq!(c.feed(&big[3..]), Err(11));
    }

    #[test]
    fn message_bytes_leave_out_every_prefix() {
        let mut bytes = frame(10);
        bytes.extend(frame(0));
        bytes.extend(frame(3));
        assert_eq!(MessageBytes::of(&bytes), 13);
        let mut m = MessageBytes::default();
        for b in &bytes {
            m.feed(std::slice::from_ref(b));
        }
        assert_eq!(m.total(), 13);
    }
}
