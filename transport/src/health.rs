//! Client health checking (gRPC A17): a `grpc.health.v1.Health/Watch` stream on each
//! subchannel's connection decides whether the endpoint may take calls.
//!
//! The Watch call goes straight to the connection's HTTP/2 sender, past the channel's call
//! path, so it is no load in any policy's statistics. tonic-health gives the message types
//! and the client; [`WatchConn`] is the few lines that let that client speak on our
//! connection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use meshless_balancer::ConnectivityState;
use meshless_discovery::backoff::{Backoff, BackoffConfig};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::h2client::{ConnError, ConnShared, H2Body};
use crate::replay::{ReqBody, Rest};

/// A tower service over one HTTP/2 connection, for the Watch call.
#[derive(Clone)]
struct WatchConn {
    tx: h2::client::SendRequest<bytes::Bytes>,
    shared: Arc<ConnShared>,
    authority: http::uri::Authority,
}

type WatchFuture = Pin<Box<dyn Future<Output = Result<http::Response<H2Body>, ConnError>> + Send>>;

impl tower_service::Service<http::Request<tonic::body::Body>> for WatchConn {
    type Response = http::Response<H2Body>;
    type Error = ConnError;
    type Future = WatchFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        // The send waits for the connection itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> WatchFuture {
        let (mut parts, body) = req.into_parts();
        crate::channel::set_origin(&mut parts.uri, &self.authority);
        let req = http::Request::from_parts(
            parts,
            ReqBody::Stream {
                prefix: Default::default(),
                rest: Rest::Owned(body),
            },
        );
        let (tx, shared) = (self.tx.clone(), self.shared.clone());
        Box::pin(async move {
            crate::h2client::send(&tx, &shared, req)
                .await
                .map_err(|e| e.error)
        })
    }
}

/// What the Watch stream reports, for the subchannel to pass on.
pub(crate) type Report<'a> = &'a (dyn Fn(ConnectivityState, Option<String>) + Sync);

/// Runs A17's health check on `tx` until the connection's task drops it: reports `Ready` on
/// SERVING and `TransientFailure` on anything else; retries a failed Watch with `backoff`,
/// which starts over whenever a message arrives; treats UNIMPLEMENTED as healthy, once per
/// connection, and never calls Watch again on it.
pub(crate) async fn watch(
    tx: h2::client::SendRequest<bytes::Bytes>,
    shared: Arc<ConnShared>,
    authority: http::uri::Authority,
    service: &str,
    backoff: &BackoffConfig,
    addr: &meshless_discovery::Address,
    report: Report<'_>,
) {
    let mut client = HealthClient::new(WatchConn {
        tx,
        shared,
        authority,
    });
    let mut backoff = Backoff::new(backoff.clone());
    let mut failed_before = false;
    loop {
        if failed_before {
            tokio::time::sleep(backoff.next_delay()).await;
            report(ConnectivityState::Connecting, None);
        }
        failed_before = true;
        let req = HealthCheckRequest {
            service: service.to_owned(),
        };
        let mut stream = match client.watch(req).await {
            Ok(resp) => resp.into_inner(),
            Err(status) => {
                if unimplemented(&status, service, addr, report) {
                    return std::future::pending().await;
                }
                report(
                    ConnectivityState::TransientFailure,
                    Some(failure(service, &status)),
                );
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(msg)) => {
                    failed_before = false;
                    backoff.reset();
                    match msg.status() {
                        ServingStatus::Serving => report(ConnectivityState::Ready, None),
                        other => report(
                            ConnectivityState::TransientFailure,
                            Some(format!(
                                "health check: {addr} reports {} for service {:?}",
                                other.as_str_name(),
                                service
                            )),
                        ),
                    }
                }
                Ok(None) => {
                    report(
                        ConnectivityState::TransientFailure,
                        Some(format!(
                            "health check: {addr} ended its Watch stream for service {service:?}"
                        )),
                    );
                    break;
                }
                Err(status) => {
                    if unimplemented(&status, service, addr, report) {
                        return std::future::pending().await;
                    }
                    report(
                        ConnectivityState::TransientFailure,
                        Some(failure(service, &status)),
                    );
                    break;
                }
            }
        }
    }
}

fn failure(service: &str, status: &Status) -> String {
    format!(
        "health check of service {service:?} failed: {:?}: {}",
        status.code(),
        status.message()
    )
}

/// UNIMPLEMENTED: the server has no health service; A17 says treat it as healthy.
fn unimplemented(
    status: &Status,
    service: &str,
    addr: &meshless_discovery::Address,
    report: Report<'_>,
) -> bool {
    if status.code() != Code::Unimplemented {
        return false;
    }
    tracing::warn!(%addr, "health checking is on (service {service:?}) but the server does not implement grpc.health.v1.Health; taking it as healthy");
    report(ConnectivityState::Ready, None);
    true
}
