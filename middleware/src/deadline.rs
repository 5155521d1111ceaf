//! A default deadline for calls that set none.

use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use tower_layer::Layer;
use tower_service::Service;

/// The gRPC header that carries a call's deadline.
const GRPC_TIMEOUT: &str = "grpc-timeout";
/// gRPC allows at most 8 digits in a `grpc-timeout` value.
const MAX_TIMEOUT_DIGITS: u64 = 99_999_999;

/// Adds a `grpc-timeout` header to every request that has none. The server then cancels the
/// call at the deadline, and a meshless `Channel` bounds its wait for a ready endpoint by it.
/// Calls that set their own deadline (`Request::set_timeout` in tonic) keep it.
#[derive(Debug, Clone)]
pub struct DefaultDeadlineLayer {
    header: HeaderValue,
}

impl DefaultDeadlineLayer {
    /// A layer that gives calls without a deadline `timeout`.
    pub fn new(timeout: Duration) -> Self {
        DefaultDeadlineLayer {
            header: encode_timeout(timeout),
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
    header: HeaderValue,
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
        if !req.headers().contains_key(GRPC_TIMEOUT) {
            req.headers_mut().insert(GRPC_TIMEOUT, self.header.clone());
        }
        self.inner.call(req)
    }
}

/// Encodes `d` in the largest-precision unit that fits gRPC's 8 digits.
fn encode_timeout(d: Duration) -> HeaderValue {
    let nanos = d.as_nanos();
    let candidates: [(u128, &str); 6] = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
        (60_000_000_000, "M"),
        (3_600_000_000_000, "H"),
    ];
    for (unit, suffix) in candidates {
        let v = nanos.div_ceil(unit);
        if v <= u128::from(MAX_TIMEOUT_DIGITS) {
            return HeaderValue::from_str(&format!("{v}{suffix}"))
                .unwrap_or(HeaderValue::from_static("99999999H"));
        }
    }
    HeaderValue::from_static("99999999H")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{ServiceExt, service_fn};

    #[test]
    fn encodes_in_the_finest_unit_that_fits() {
        assert_eq!(encode_timeout(Duration::from_millis(250)), "250000u");
        assert_eq!(encode_timeout(Duration::from_secs(2)), "2000000u");
        assert_eq!(encode_timeout(Duration::from_secs(200)), "200000m");
        assert_eq!(
            encode_timeout(Duration::from_secs(86_400 * 365)),
            "31536000S"
        );
        assert_eq!(
            encode_timeout(Duration::from_secs(86_400 * 365 * 4)),
            "2102400M"
        );
        assert_eq!(encode_timeout(Duration::MAX), "99999999H");
    }

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
