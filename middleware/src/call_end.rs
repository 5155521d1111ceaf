//! The end of a call as the application sees it, for A66's `grpc.client.call.duration`
//! recorded by the resilience stack over all of a call's attempts.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::{Code, Status};

/// What is told the call's status code once its response ends.
pub(crate) type OnEnd = Box<dyn FnOnce(Code) + Send>;

/// A response body whose end the resilience stack can observe, to record a call's
/// duration (gRPC A66) when its status arrives. Implemented for `tonic::body::Body`, the
/// body of a `meshless::Channel`'s responses.
pub trait ObservedBody: Sized {
    /// This body, telling `end` the call's status code once the body ends: the trailers'
    /// `grpc-status` (or `in_headers`, a Trailers-Only response's), the error it failed
    /// with, or CANCELLED when it is dropped before its end.
    #[doc(hidden)]
    fn on_end(self, in_headers: Option<Code>, end: Box<dyn FnOnce(Code) + Send>) -> Self;
}

impl ObservedBody for tonic::body::Body {
    fn on_end(self, in_headers: Option<Code>, end: OnEnd) -> Self {
        tonic::body::Body::new(Ending {
            inner: self,
            code: in_headers,
            end: Some(end),
        })
    }
}

struct Ending {
    inner: tonic::body::Body,
    code: Option<Code>,
    end: Option<OnEnd>,
}

impl Ending {
    fn finish(&mut self, code: Code) {
        if let Some(end) = self.end.take() {
            end(code);
        }
    }
}

impl Body for Ending {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(code) = f.trailers_ref().and_then(meshless_transport::grpc_status) {
                    self.code = Some(code);
                }
            }
            Some(Err(status)) => self.finish(status.code()),
            // A response that ends with no status is UNKNOWN to the application too.
            None => {
                let code = self.code.unwrap_or(Code::Unknown);
                self.finish(code);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        // Read to its trailers but not polled once more: it ended with them. Dropped
        // earlier: the application gave the call up.
        let code = self.code.unwrap_or(Code::Cancelled);
        self.finish(code);
    }
}
