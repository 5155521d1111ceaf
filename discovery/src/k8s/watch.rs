//! The watch loop: kube-runtime's watcher over the Service's EndpointSlices, turned into
//! full snapshots.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::utils::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use super::slices::{self, SERVICE_NAME_LABEL, Slice};
use super::{K8sConfig, ServiceTarget};
use crate::backoff::Backoff;
use crate::{DiscoveryError, Endpoint, ErrorKind, Update, UpdateStream};

/// Where the RBAC a client needs is written down.
const RBAC_EXAMPLE: &str = "examples/k8s/rbac.yaml";

type Item = Result<Update, DiscoveryError>;

struct State {
    label: String,
    target: ServiceTarget,
    config: K8sConfig,
    namespace: String,
    watch: Option<BoxStream<'static, watcher::Result<Event<DynamicObject>>>>,
    /// Slices by name, as last listed and watched.
    slices: BTreeMap<String, Slice>,
    /// Slices of a (re)list in progress: swapped in whole when it is done, so a relist
    /// (after 410 Gone, or a reconnect) never shows a half-empty set.
    relist: Option<BTreeMap<String, Slice>>,
    last: Option<Vec<Endpoint>>,
    /// Problems found during a relist, reported after its snapshot (a snapshot clears the
    /// channel's discovery error, so reporting them before would hide them).
    pending: Vec<String>,
    client_backoff: Backoff,
    /// Wait this long before the next attempt to build a client.
    pause: Option<Duration>,
}

pub(super) fn watch(label: String, target: ServiceTarget, config: K8sConfig) -> UpdateStream {
    let client_backoff = Backoff::new(config.backoff.clone());
    let state = State {
        label,
        target,
        config,
        namespace: String::new(),
        watch: None,
        slices: BTreeMap::new(),
        relist: None,
        last: None,
        pending: Vec::new(),
        client_backoff,
        pause: None,
    };
    let s = stream::unfold(state, |mut st| async move {
        let items = st.step().await;
        Some((stream::iter(items), st))
    })
    .flatten();
    Box::pin(s)
}

impl State {
    async fn step(&mut self) -> Vec<Item> {
        let Some(watch) = self.watch.as_mut() else {
            return self.connect().await;
        };
        match watch.next().await {
            Some(Ok(event)) => self.on_event(event),
            Some(Err(err)) => {
                // kube resumes a broken watch without a relist: send a snapshot with the next
                // event even if the set is unchanged, so the channel learns discovery works again.
                self.last = None;
                vec![Err(self.error(&err))]
            }
            None => {
                self.watch = None;
                Vec::new()
            }
        }
    }

    async fn connect(&mut self) -> Vec<Item> {
        if let Some(d) = self.pause.take() {
            tokio::time::sleep(d).await;
        }
        let client = match make_client(&self.config).await {
            Ok(c) => c,
            Err(msg) => {
                self.pause = Some(self.client_backoff.next_delay());
                return vec![Err(DiscoveryError::new(
                    ErrorKind::Unavailable,
                    format!("{}: no Kubernetes client: {msg}", self.label),
                ))];
            }
        };
        self.client_backoff.reset();
        self.namespace = self
            .target
            .namespace
            .clone()
            .or_else(|| self.config.namespace.clone())
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
        ));
        let api: Api<DynamicObject> = Api::namespaced_with(client, &self.namespace, &resource);
        let config = watcher::Config::default()
            .labels(&format!("{SERVICE_NAME_LABEL}={}", self.target.service));
        self.watch = Some(
            watcher::watcher(api, config)
                .backoff(KubeBackoff(Backoff::new(self.config.backoff.clone())))
                .boxed(),
        );
        Vec::new()
    }

    fn on_event(&mut self, event: Event<DynamicObject>) -> Vec<Item> {
        let mut problems = Vec::new();
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                // Problems of an earlier list that did not finish are stale.
                self.pending.clear();
            }
            Event::InitApply(obj) => {
                let name = obj.metadata.name.clone().unwrap_or_default();
                // A slice that no longer parses keeps its previous version, as between lists.
                let slice = self
                    .parse(obj, &mut problems)
                    .or_else(|| self.slices.get(&name).cloned());
                if let (Some(map), Some(slice)) = (self.relist.as_mut(), slice) {
                    map.insert(name, slice);
                }
            }
            Event::InitDone => {
                if let Some(map) = self.relist.take() {
                    self.slices = map;
                }
                // Always after a (re)list, even when nothing changed: it is the proof that
                // discovery works again, and a consumer that missed events is made whole.
                self.last = None;
            }
            Event::Apply(obj) => {
                let name = obj.metadata.name.clone().unwrap_or_default();
                if let Some(slice) = self.parse(obj, &mut problems) {
                    self.slices.insert(name, slice);
                }
            }
            Event::Delete(obj) => {
                let name = obj.metadata.name.clone().unwrap_or_default();
                self.slices.remove(&name);
            }
        }
        let mut out = Vec::new();
        if self.relist.is_some() {
            self.pending.append(&mut problems);
        } else {
            problems.splice(0..0, self.pending.drain(..));
            match slices::endpoints(
                &self.slices,
                &self.target.port,
                self.config.family,
                &self.target.service,
            ) {
                Ok((eps, warnings)) => {
                    if self.last.as_ref() != Some(&eps) {
                        self.last = Some(eps.clone());
                        out.push(Ok(Update::Reset(eps)));
                    }
                    problems.extend(warnings);
                }
                Err(msg) => out.push(Err(DiscoveryError::new(
                    ErrorKind::Malformed,
                    format!("{}: {msg}", self.label),
                ))),
            }
        }
        // Several problems at once: one error carrying them all, so none hides another.
        if !problems.is_empty() {
            out.push(Err(DiscoveryError::new(
                ErrorKind::Malformed,
                format!("{}: {}", self.label, problems.join("; ")),
            )));
        }
        out
    }

    /// Parses one object. A slice that does not parse is reported and ignored (a previous
    /// version of it stays in force); problems with single endpoints are reported and those
    /// endpoints skipped.
    fn parse(&self, obj: DynamicObject, problems: &mut Vec<String>) -> Option<Slice> {
        let name = obj
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| "(unnamed)".into());
        // The object's fields other than metadata are in `data`: read them as a typed
        // EndpointSlice without serializing the object again.
        match serde_json::from_value::<EndpointSlice>(obj.data) {
            Ok(mut slice) => {
                slice.metadata = obj.metadata;
                let (slice, warnings) = slices::convert(slice);
                problems.extend(
                    warnings
                        .into_iter()
                        .map(|w| format!("EndpointSlice `{name}`: {w}")),
                );
                Some(slice)
            }
            Err(e) => {
                problems.push(format!(
                    "EndpointSlice `{name}` is malformed and was ignored: {e}"
                ));
                None
            }
        }
    }

    fn error(&self, err: &watcher::Error) -> DiscoveryError {
        let (verb, kube_err) = match err {
            watcher::Error::InitialListFailed(e) => ("list", e),
            watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => ("watch", e),
            watcher::Error::WatchError(status) => {
                return self.api_error("watch", status.code, &status.message);
            }
            watcher::Error::NoResourceVersion => {
                return DiscoveryError::new(
                    ErrorKind::Malformed,
                    format!(
                        "{}: the API server's EndpointSlice list has no resourceVersion; retrying",
                        self.label
                    ),
                );
            }
        };
        match kube_err {
            kube::Error::Api(status) => self.api_error(verb, status.code, &status.message),
            kube::Error::SerdeError(e) => DiscoveryError::new(
                ErrorKind::Malformed,
                format!(
                    "{}: the API server's answer to {verb} endpointslices could not be parsed: {e}; retrying",
                    self.label
                ),
            ),
            other => DiscoveryError::new(
                ErrorKind::Unavailable,
                format!(
                    "{}: cannot {verb} endpointslices: the Kubernetes API server is unreachable ({other}); retrying with backoff and keeping the last known endpoints",
                    self.label
                ),
            ),
        }
    }

    fn api_error(&self, verb: &str, code: u16, message: &str) -> DiscoveryError {
        let ns = &self.namespace;
        let label = &self.label;
        match code {
            403 => {
                let who = service_account(message)
                    .map(|(ns, sa)| format!("service account `{sa}` in namespace `{ns}`"))
                    .unwrap_or_else(|| "this client's identity".to_owned());
                DiscoveryError::new(
                    ErrorKind::Forbidden,
                    format!(
                        "{label}: Kubernetes forbids {who} to {verb} endpointslices.discovery.k8s.io in namespace `{ns}` (403: {message}). Grant `list` and `watch` on `endpointslices` in API group `discovery.k8s.io` with a Role and RoleBinding in `{ns}` (see {RBAC_EXAMPLE}); discovery keeps retrying and recovers once the rule exists"
                    ),
                )
            }
            401 => DiscoveryError::new(
                ErrorKind::Unauthenticated,
                format!(
                    "{label}: the Kubernetes API server rejected our credentials (401: {message}) when we tried to {verb} endpointslices in namespace `{ns}`; check the service-account token in the cluster, or the kubeconfig user outside it"
                ),
            ),
            404 => DiscoveryError::new(
                ErrorKind::NotFound,
                format!(
                    "{label}: {verb} endpointslices.discovery.k8s.io in namespace `{ns}` answered 404 ({message}); check that the namespace exists and that the cluster serves discovery.k8s.io/v1 (Kubernetes 1.21 or later)"
                ),
            ),
            500..=599 => DiscoveryError::new(
                ErrorKind::Unavailable,
                format!(
                    "{label}: the Kubernetes API server failed to {verb} endpointslices ({code}: {message}); retrying with backoff and keeping the last known endpoints"
                ),
            ),
            _ => DiscoveryError::new(
                ErrorKind::Other,
                format!(
                    "{label}: {verb} endpointslices in namespace `{ns}` failed ({code}: {message}); retrying"
                ),
            ),
        }
    }
}

/// The client: the configured one, or one built from a kubeconfig file or the environment.
async fn make_client(config: &K8sConfig) -> Result<kube::Client, String> {
    if let Some(c) = &config.client {
        return Ok(c.clone());
    }
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            format!("{e}; run inside a cluster with a service account, or set KUBECONFIG")
        })?,
    };
    kube::Client::try_from(kube_config).map_err(|e| e.to_string())
}

/// `("ns", "name")` from an API server message naming `system:serviceaccount:ns:name`.
fn service_account(message: &str) -> Option<(&str, &str)> {
    let rest = &message[message.find("system:serviceaccount:")? + "system:serviceaccount:".len()..];
    let end = rest
        .find(|c: char| c == '"' || c.is_whitespace())
        .unwrap_or(rest.len());
    rest[..end].split_once(':')
}

/// The shared backoff as kube-runtime's watcher takes it: its own exponential backoff
/// cannot be configured from outside.
#[derive(Debug, Clone)]
struct KubeBackoff(Backoff);

impl Iterator for KubeBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(self.0.next_delay())
    }
}

impl kube::runtime::utils::Backoff for KubeBackoff {
    fn reset(&mut self) {
        self.0.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_service_account() {
        let msg = r#"endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:prod:greeter-client" cannot list resource "endpointslices" in API group "discovery.k8s.io" in the namespace "prod""#;
        assert_eq!(service_account(msg), Some(("prod", "greeter-client")));
        assert_eq!(service_account("forbidden"), None);
    }

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        use kube::runtime::utils::Backoff as _;
        let mut b = KubeBackoff(Backoff::new(
            crate::backoff::BackoffConfig::default()
                .base_delay(Duration::from_millis(100))
                .max_delay(Duration::from_secs(1)),
        ));
        let d: Vec<Duration> = (0..8).map(|_| b.next().unwrap()).collect();
        assert!(d[0] >= Duration::from_millis(80) && d[0] <= Duration::from_millis(120));
        assert!(d[7] <= Duration::from_millis(1200) && d[7] >= Duration::from_millis(800));
        b.reset();
        assert!(b.next().unwrap() <= Duration::from_millis(120));
    }
}
