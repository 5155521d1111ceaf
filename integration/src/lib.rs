//! The meshless test kit: loopback doubles and load tooling shared by the integration tests,
//! the demo and the examples.
//!
//! - [`greeter`]: the generated client and server of `proto/greeter.proto`.
//! - [`server`]: a configurable greeter server on loopback that can be killed, stopped
//!   gracefully and restarted on the same port.
//! - [`proxy`]: an L4 proxy that, like kube-proxy, pins each TCP connection to one backend.
//! - [`etcd`]: a real etcd (Debian's `etcd` binary) on free loopback ports that can be
//!   killed, paused, restarted, compacted and put behind auth, and a TCP gate that cuts
//!   connections on demand.
//! - [`dns`]: an in-process DNS server (hickory-server) with records changeable mid-test,
//!   and a UDP responder that answers garbage.
//! - [`load`] and [`report`]: drive calls at a fixed concurrency; print per-backend shares and
//!   latency percentiles as a table or JSON.
//!
//! This library does not depend on `meshless`, so that the `meshless` package can use it in
//! its examples; the tests in `tests/` do.
#![warn(missing_docs)]

pub mod greeter {
    //! The `greeter.v1` protocol: messages, `greeter_client` and `greeter_server`, generated
    //! from `proto/greeter.proto` and checked in (see `tests/proto_fresh.rs`).
    include!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../proto/greeter.v1.rs"
    ));
}

pub mod callgrind;
pub mod consul;
pub mod dns;
pub mod etcd;
pub mod h2proxy;
pub mod k8s;
pub mod load;
pub mod proxy;
pub mod report;
pub mod server;
pub mod tls;

pub use proxy::ProxyHandle;
pub use server::{ServerHandle, TestServer};
