//! What the layers of this crate wrap: a service with a meshless `Channel`'s types.

use tonic::Status;
use tower_service::Service;

/// A service that takes and gives what a meshless `Channel` does: `http::Request` with a
/// tonic body in, `http::Response<B>` or a `Status` out; cheap to clone and sendable, so a
/// call's later attempts can run on clones of it.
pub trait ChannelService<B>:
    Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<B>,
        Error = Status,
        Future: Send,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> ChannelService<B> for S where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<B>,
            Error = Status,
            Future: Send,
        > + Clone
        + Send
        + 'static
{
}

/// The service that `poll_ready` made ready, for a call's first attempt, and a clone for its
/// later ones; `inner` keeps a fresh clone for the next call (tower's rule: only the
/// readied service may take the call).
pub(crate) fn take_ready<S: Clone>(inner: &mut S) -> (S, S) {
    let clone = inner.clone();
    let ready = std::mem::replace(inner, clone);
    (ready, inner.clone())
}
