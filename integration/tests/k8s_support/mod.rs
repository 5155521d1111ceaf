//! The Kubernetes API server the k8s tests talk to, and EndpointSlices for the test kit's
//! loopback servers (included with `mod k8s_support;` next to `mod common;`).
#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use meshless::Channel;
use meshless::discovery::Registry;
use meshless::discovery::k8s::{K8sConfig, K8sScheme};
use meshless_integration::k8s::{KubeApi, endpoint_slice};
use meshless_integration::server::ServerHandle;
use serde_json::Value;

use crate::common::fast_backoff;

/// The Service every test slice belongs to.
pub const SERVICE: &str = "greeter";

/// The API server the tests talk to: the double, or a real cluster.
pub struct Cluster {
    /// `None` on a real cluster.
    api: Option<KubeApi>,
    /// A client of this API server.
    pub client: kube::Client,
    /// The namespace the tests' slices live in.
    pub ns: String,
}

impl Cluster {
    /// The real cluster `MESHLESS_TEST_KUBECONFIG` names (namespace
    /// `MESHLESS_TEST_NAMESPACE`, default `default`), or the double when it is unset.
    pub async fn start() -> Cluster {
        if let Ok(path) = std::env::var("MESHLESS_TEST_KUBECONFIG") {
            let kc = kube::config::Kubeconfig::read_from(&path).expect("read kubeconfig");
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .expect("kubeconfig");
            let client = kube::Client::try_from(config).expect("client");
            let ns = std::env::var("MESHLESS_TEST_NAMESPACE").unwrap_or_else(|_| "default".into());
            let c = Cluster {
                api: None,
                client,
                ns,
            };
            c.clear().await;
            return c;
        }
        Cluster::double_only().await
    }

    /// The loopback double, whatever the environment says: for tests that inject faults
    /// into it or read its request log.
    pub async fn double_only() -> Cluster {
        let api = KubeApi::start().await.expect("start API double");
        let config = kube::Config::new(api.url().parse().expect("url"));
        let client = kube::Client::try_from(config).expect("client");
        Cluster {
            api: Some(api),
            client,
            ns: "default".into(),
        }
    }

    /// The double of a [`Cluster::double_only`].
    pub fn double(&self) -> &KubeApi {
        self.api
            .as_ref()
            .expect("tests that use the double start it with Cluster::double_only")
    }

    /// The double of a [`Cluster::double_only`], to stop and restart it.
    pub fn double_mut(&mut self) -> &mut KubeApi {
        self.api
            .as_mut()
            .expect("tests that use the double start it with Cluster::double_only")
    }

    /// The EndpointSlices of the test namespace.
    pub fn slices(&self) -> Api<EndpointSlice> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates or replaces a slice.
    pub async fn apply(&self, slice: Value) {
        let slice: EndpointSlice = serde_json::from_value(slice).expect("slice");
        let name = slice.metadata.name.clone().expect("name");
        let api = self.slices();
        match api.get_opt(&name).await.expect("get") {
            Some(old) => {
                let mut new = slice;
                new.metadata.resource_version = old.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &new)
                    .await
                    .expect("replace");
            }
            None => {
                api.create(&PostParams::default(), &slice)
                    .await
                    .expect("create");
            }
        }
    }

    /// Deletes a slice.
    pub async fn delete(&self, name: &str) {
        self.slices()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }

    /// Deletes every slice of [`SERVICE`], so a real cluster starts clean.
    pub async fn clear(&self) {
        let api = self.slices();
        let lp = kube::api::ListParams::default()
            .labels(&format!("kubernetes.io/service-name={SERVICE}"));
        if let Ok(list) = api.list(&lp).await {
            for s in list.items {
                if let Some(n) = s.metadata.name {
                    let _ = api.delete(&n, &DeleteParams::default()).await;
                }
            }
        }
    }

    /// Discovery through this API server, retrying fast so recovery tests stay short.
    pub fn config(&self) -> K8sConfig {
        K8sConfig::default().client(self.client.clone()).backoff(
            meshless::BackoffConfig::default()
                .base_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(400)),
        )
    }

    /// A channel for `kubernetes:///greeter.<ns>:<port>`.
    pub fn channel(&self, port: &str, policy: &str) -> Channel {
        let mut registry = Registry::default();
        registry.register(K8sScheme::new(self.config()));
        Channel::builder(format!("kubernetes:///{SERVICE}.{}:{port}", self.ns))
            .registry(registry)
            .policy(policy)
            .backoff(fast_backoff())
            .queue_timeout(Duration::from_secs(3))
            .build()
            .expect("channel")
    }
}

/// `(ip, ready, serving, terminating)` for a server on loopback.
pub fn pod(s: &ServerHandle, ready: bool, terminating: bool) -> (String, bool, bool, bool) {
    (
        s.addr().ip().to_string(),
        ready,
        ready || terminating,
        terminating,
    )
}

/// A slice of `servers`, all on one port: each server listens on its own port, so each
/// slice holds servers with the same port (as pods of one Deployment do).
pub fn slice_for(name: &str, port: u16, eps: &[(String, bool, bool, bool)]) -> Value {
    let eps: Vec<(&str, bool, bool, bool)> = eps
        .iter()
        .map(|(a, r, s, t)| (a.as_str(), *r, *s, *t))
        .collect();
    endpoint_slice(name, SERVICE, "IPv4", &[("grpc", port)], &eps)
}

/// Loopback servers have distinct ports but one IP, so a "pod" here is one slice per server.
pub fn slice_name(s: &ServerHandle) -> String {
    format!("{SERVICE}-{}", s.addr().port())
}

/// Creates or replaces the one-pod slice of `s`.
pub async fn publish(c: &Cluster, s: &ServerHandle, ready: bool, terminating: bool) {
    c.apply(slice_for(
        &slice_name(s),
        s.addr().port(),
        &[pod(s, ready, terminating)],
    ))
    .await;
}
