//! A default deadline for calls that set none.

use std::task::{Context, Poll};
use std::time::Duration;

use meshless_transport::GrpcTimeout;
use tower_layer::Layer;
use tower_service::Service;

/// Adds a `grpc-timeout` header to every request that has none. The server then cancels the
/// call at the deadline, and a meshless `Channel` bounds its wait for a ready endpoint by it.
/// Calls that set their own deadline (`Request::set_timeout` in tonic) keep it.
#[derive(Debug, Clone)]
pub struct DefaultDeadlineLayer {
    header: GrpcTimeout,
}

impl DefaultDeadlineLayer {
    /// A layer that gives calls without a deadline `timeout`.
    pub fn new(timeout: Duration) -> Self {
        DefaultDeadlineLayer {
            header: GrpcTimeout::new(timeout),
        }
    }
}

impl<S> Layer<S> for DefaultDeadlineLayer {
    type Service = DefaultDeadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DefaultDeadline {
            inner,
            header: self.header.clone(),
        }
    }
}

/// The service made by [`DefaultDeadlineLayer`].
#[derive(Debug, Clone)]
pub struct DefaultDeadline<S> {
    inner: S,
    header: GrpcTimeout,
}

impl<S, B> Service<http::Request<B>> for DefaultDeadline<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> S::Future {
        self.header.set_if_absent(req.headers_mut());
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use tower::{ServiceExt, service_fn};

    const GRPC_TIMEOUT: &str = "grpc-timeout";

    #[tokio::test]
    async fn adds_only_when_missing() {
        let echo = service_fn(|req: http::Request<()>| async move {
            Ok::<_, std::convert::Infallible>(req.headers().get(GRPC_TIMEOUT).cloned())
        });
        let svc = DefaultDeadlineLayer::new(Duration::from_secs(1)).layer(echo);
        let got = svc.clone().oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(got.unwrap(), "1000000u");
        let mut req = http::Request::new(());
        req.headers_mut()
            .insert(GRPC_TIMEOUT, HeaderValue::from_static("5m"));
        let got = svc.oneshot(req).await.unwrap();
        assert_eq!(got.unwrap(), "5m");
    }
}
