//! The document's schema: `defaults`, `clients`, each client's connection settings and its
//! gRPC service config, read into the types the builder takes.

use std::sync::Arc;
use std::time::Duration;

use meshless_balancer::{
    HashKeyConfig, LeastRequestConfig, MaglevConfig, P2cEwmaConfig, PickFirstConfig, Policy,
    RandomConfig, RingHashConfig, RoundRobin, WeightedRoundRobinConfig,
};
use meshless_middleware::{
    HedgeDelay, HedgingPolicy, MethodPolicies, MethodPolicy, RetryPolicy, RetryThrottle,
};
use meshless_transport::{
    BackoffConfig, FailurePercentageEjection, Http2Settings, OutlierDetection, SuccessRateEjection,
};
use tonic::Code;

use crate::decode::{self, Cx, Obj, join};
use crate::tree::{Kind, Node, Pos};

/// The connection settings of a client, each optional so that a client's own override the
/// defaults' key by key.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    pub target: Option<String>,
    pub authority: Option<String>,
    pub connect_timeout: Option<Duration>,
    pub queue_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub keepalive: Option<Keepalive>,
    pub backoff: Option<BackoffConfig>,
    pub http2: Option<Http2Settings>,
    pub tls: Option<Tls>,
    pub max_requests_per_endpoint: Option<u32>,
    pub max_requests: Option<u32>,
    pub service_config: Option<ServiceConfig>,
}

#[derive(Debug, Clone)]
pub(crate) struct Keepalive {
    pub time: Duration,
    pub timeout: Duration,
    pub permit_without_stream: bool,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Tls {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub server_name: Option<String>,
    pub assume_http2: bool,
}

/// gRPC service config, as meshless applies it.
#[derive(Clone, Default)]
pub(crate) struct ServiceConfig {
    pub policy: Option<NamedPolicy>,
    /// What the file said about the policy and outlier detection, rendered: two configs
    /// with the same rendering balance the same way.
    pub balancing_source: String,
    pub outlier_detection: Option<OutlierDetection>,
    pub methods: MethodPolicies,
    pub retry_throttling: Option<(u32, f64)>,
    pub health_check: Option<String>,
}

impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("policy", &self.policy.as_ref().map(|(n, _)| n))
            .field("outlier_detection", &self.outlier_detection)
            .field("methods", &self.methods)
            .field("retry_throttling", &self.retry_throttling)
            .field("health_check", &self.health_check)
            .finish()
    }
}

const CLIENT_KEYS: &[&str] = &[
    "target",
    "discovery",
    "authority",
    "connectTimeout",
    "queueTimeout",
    "idleTimeout",
    "keepalive",
    "backoff",
    "http2",
    "tls",
    "maxRequestsPerEndpoint",
    "maxRequests",
    "serviceConfig",
];

/// Reads a client's (or the defaults') settings.
pub(crate) fn settings(cx: &mut Cx<'_>, node: &Node, path: &str, is_default: bool) -> Settings {
    let mut out = Settings::default();
    let Some(o) = Obj::new(cx, node, path, CLIENT_KEYS) else {
        return out;
    };
    if let Some((n, p)) = o.get("target") {
        if is_default {
            cx.err(
                &p,
                n.pos,
                "a target belongs to a client, not to the defaults",
            );
        } else {
            out.target = decode::string(cx, n, &p);
        }
    }
    if let Some((n, p)) = o.get("discovery") {
        if is_default {
            cx.err(
                &p,
                n.pos,
                "discovery belongs to a client, not to the defaults",
            );
        } else if o.get("target").is_some() {
            cx.err(&p, n.pos, "give `target` or `discovery`, not both");
        } else {
            out.target = discovery(cx, n, &p);
        }
    }
    if let Some((n, p)) = o.get("authority") {
        out.authority = decode::string(cx, n, &p);
        if let Some(a) = &out.authority
            && a.parse::<http::uri::Authority>().is_err()
        {
            cx.err(
                &p,
                n.pos,
                format!("`{a}` is not a valid authority (host[:port])"),
            );
        }
    }
    for (key, slot) in [
        ("connectTimeout", &mut out.connect_timeout),
        ("queueTimeout", &mut out.queue_timeout),
        ("idleTimeout", &mut out.idle_timeout),
    ] {
        if let Some((n, p)) = o.get(key) {
            *slot = positive(cx, n, &p);
        }
    }
    if let Some((n, p)) = o.get("keepalive") {
        out.keepalive = keepalive(cx, n, &p);
    }
    if let Some((n, p)) = o.get("backoff") {
        out.backoff = backoff(cx, n, &p);
    }
    if let Some((n, p)) = o.get("http2") {
        out.http2 = http2(cx, n, &p);
    }
    if let Some((n, p)) = o.get("tls") {
        out.tls = tls(cx, n, &p);
    }
    for (key, slot) in [
        ("maxRequestsPerEndpoint", &mut out.max_requests_per_endpoint),
        ("maxRequests", &mut out.max_requests),
    ] {
        if let Some((n, p)) = o.get(key) {
            *slot = decode::int(cx, n, &p, 1, i128::from(u32::MAX)).map(|v| v as u32);
        }
    }
    if let Some((n, p)) = o.get("serviceConfig") {
        out.service_config = Some(service_config(cx, n, &p));
    }
    out
}

fn positive(cx: &mut Cx<'_>, n: &Node, p: &str) -> Option<Duration> {
    let d = decode::duration(cx, n, p)?;
    if d.is_zero() {
        cx.err(p, n.pos, "must be above zero");
        return None;
    }
    Some(d)
}

fn keepalive(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Keepalive> {
    let o = Obj::new(cx, node, path, &["time", "timeout", "permitWithoutStream"])?;
    let time = match o.get("time") {
        Some((n, p)) => positive(cx, n, &p)?,
        None => {
            cx.err(
                path,
                o.pos,
                "keepalive needs `time`, the interval between pings (such as \"30s\")",
            );
            return None;
        }
    };
    let timeout = match o.get("timeout") {
        Some((n, p)) => positive(cx, n, &p)?,
        None => meshless_transport::DEFAULT_KEEPALIVE_TIMEOUT,
    };
    let permit_without_stream = match o.get("permitWithoutStream") {
        Some((n, p)) => decode::boolean(cx, n, &p)?,
        None => false,
    };
    Some(Keepalive {
        time,
        timeout,
        permit_without_stream,
    })
}

fn backoff(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<BackoffConfig> {
    let o = Obj::new(
        cx,
        node,
        path,
        &["baseDelay", "multiplier", "jitter", "maxDelay"],
    )?;
    let mut b = BackoffConfig::default();
    if let Some((n, p)) = o.get("baseDelay") {
        b = b.base_delay(positive(cx, n, &p)?);
    }
    if let Some((n, p)) = o.get("maxDelay") {
        b = b.max_delay(positive(cx, n, &p)?);
    }
    if let Some((n, p)) = o.get("multiplier") {
        let m = decode::number(cx, n, &p)?;
        if m < 1.0 {
            cx.err(&p, n.pos, format!("must be at least 1, got {m}"));
            return None;
        }
        b = b.multiplier(m);
    }
    if let Some((n, p)) = o.get("jitter") {
        let j = decode::number(cx, n, &p)?;
        if !(0.0..=1.0).contains(&j) {
            cx.err(&p, n.pos, format!("must be between 0 and 1, got {j}"));
            return None;
        }
        b = b.jitter(j);
    }
    Some(b)
}

fn http2(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Http2Settings> {
    let o = Obj::new(
        cx,
        node,
        path,
        &[
            "initialStreamWindowSize",
            "initialConnectionWindowSize",
            "adaptiveWindow",
            "maxFrameSize",
            "maxHeaderListSize",
        ],
    )?;
    let mut h = Http2Settings::default();
    let window = |cx: &mut Cx<'_>, key: &str| {
        o.get(key)
            .and_then(|(n, p)| decode::int(cx, n, &p, 65_535, 2_147_483_647).map(|v| v as u32))
    };
    if let Some(v) = window(cx, "initialStreamWindowSize") {
        h = h.initial_stream_window(v);
    }
    if let Some(v) = window(cx, "initialConnectionWindowSize") {
        h = h.initial_connection_window(v);
    }
    if let Some((n, p)) = o.get("adaptiveWindow")
        && let Some(b) = decode::boolean(cx, n, &p)
    {
        h = h.adaptive_window(b);
    }
    if let Some((n, p)) = o.get("maxFrameSize")
        && let Some(v) = decode::int(cx, n, &p, 16_384, 16_777_215)
    {
        h = h.max_frame_size(v as u32);
    }
    if let Some((n, p)) = o.get("maxHeaderListSize")
        && let Some(v) = decode::int(cx, n, &p, 1024, i128::from(u32::MAX))
    {
        h = h.max_header_list_size(v as u32);
    }
    Some(h)
}

fn tls(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Tls> {
    let o = Obj::new(
        cx,
        node,
        path,
        &["caFile", "certFile", "keyFile", "serverName", "assumeHttp2"],
    )?;
    let mut t = Tls::default();
    for (key, slot) in [
        ("caFile", &mut t.ca_file),
        ("certFile", &mut t.cert_file),
        ("keyFile", &mut t.key_file),
        ("serverName", &mut t.server_name),
    ] {
        if let Some((n, p)) = o.get(key) {
            *slot = decode::string(cx, n, &p);
        }
    }
    if let Some((n, p)) = o.get("assumeHttp2") {
        t.assume_http2 = decode::boolean(cx, n, &p)?;
    }
    if t.cert_file.is_some() != t.key_file.is_some() {
        cx.err(
            path,
            o.pos,
            "a client identity needs both certFile and keyFile",
        );
    }
    Some(t)
}

// ===== service config =====

const SERVICE_CONFIG_KEYS: &[&str] = &[
    "loadBalancingConfig",
    "loadBalancingPolicy",
    "methodConfig",
    "retryThrottling",
    "healthCheckConfig",
];

/// Reads gRPC service config (gRPC's names and semantics).
pub(crate) fn service_config(cx: &mut Cx<'_>, node: &Node, path: &str) -> ServiceConfig {
    let mut sc = ServiceConfig::default();
    let Some(o) = Obj::new(cx, node, path, SERVICE_CONFIG_KEYS) else {
        return sc;
    };
    if let Some((n, p)) = o.get("loadBalancingPolicy") {
        if o.get("loadBalancingConfig").is_some() {
            cx.err(&p, n.pos, "give loadBalancingConfig or loadBalancingPolicy, not both (gRPC ignores loadBalancingPolicy then)");
        } else if let Some(name) = decode::string(cx, n, &p) {
            let synthetic = Node {
                kind: Kind::Map(Vec::new()),
                pos: n.pos,
            };
            sc.policy = policy(cx, &name.to_ascii_lowercase(), &synthetic, &p, n.pos);
        }
    }
    for key in ["loadBalancingPolicy", "loadBalancingConfig"] {
        if let Some((n, _)) = o.get(key) {
            sc.balancing_source.push_str(&n.render());
        }
    }
    if let Some((n, p)) = o.get("loadBalancingConfig") {
        let (policy, outlier) = load_balancing_config(cx, n, &p);
        sc.policy = policy;
        sc.outlier_detection = outlier;
    }
    if let Some((n, p)) = o.get("methodConfig") {
        sc.methods = method_config(cx, n, &p);
    }
    if let Some((n, p)) = o.get("retryThrottling")
        && let Some(t) = Obj::new(cx, n, &p, &["maxTokens", "tokenRatio"])
    {
        let tokens = t
            .get("maxTokens")
            .and_then(|(n, p)| decode::int(cx, n, &p, 1, 1000));
        let ratio = t
            .get("tokenRatio")
            .and_then(|(n, p)| decode::number(cx, n, &p).map(|r| (r, n.pos, p)));
        match (tokens, ratio) {
            (Some(max), Some((ratio, pos, rp))) => match RetryThrottle::new(max as u32, ratio) {
                Ok(_) => sc.retry_throttling = Some((max as u32, ratio)),
                Err(e) => cx.err(&rp, pos, e.to_string()),
            },
            (None, _) if t.get("maxTokens").is_none() => {
                cx.err(&p, n.pos, "retryThrottling needs maxTokens (1 to 1000)");
            }
            (_, None) if t.get("tokenRatio").is_none() => {
                cx.err(
                    &p,
                    n.pos,
                    "retryThrottling needs tokenRatio (above 0, such as 0.1)",
                );
            }
            _ => {}
        }
    }
    if let Some((n, p)) = o.get("healthCheckConfig")
        && let Some(h) = Obj::new(cx, n, &p, &["serviceName"])
    {
        sc.health_check = match h.get("serviceName") {
            Some((n, p)) => decode::string(cx, n, &p),
            None => Some(String::new()),
        };
    }
    sc
}

/// A named policy.
pub(crate) type NamedPolicy = (String, Arc<dyn Policy>);
/// What `loadBalancingConfig` chose: the policy, and outlier detection around it.
type Balancing = (Option<NamedPolicy>, Option<OutlierDetection>);

/// Policy names meshless knows, gRPC's first, then aliases and meshless's own.
pub(crate) const POLICY_NAMES: &[&str] = &[
    "pick_first",
    "round_robin",
    "weighted_round_robin",
    "ring_hash_experimental",
    "least_request_experimental",
    "outlier_detection_experimental",
    "ring_hash",
    "least_request",
    "consistent_hash",
    "p2c_ewma",
    "maglev",
    "random",
];

/// `loadBalancingConfig`: a list of `{policy: config}`; the first policy meshless knows
/// wins, as in gRPC. A name that looks like a typo of a known one is an error rather than
/// skipped.
fn load_balancing_config(cx: &mut Cx<'_>, node: &Node, path: &str) -> Balancing {
    let items = decode::list(cx, node, path);
    if matches!(node.kind, Kind::Seq(_)) && items.is_empty() {
        cx.err(
            path,
            node.pos,
            "an empty list: give at least one policy, such as {round_robin: {}}",
        );
    }
    for (i, item) in items.iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let Kind::Map(entries) = &item.kind else {
            cx.err(&ip, item.pos, format!("expected a map of one policy name to its config, such as {{round_robin: {{}}}}, found {}", item.kind.describe()));
            continue;
        };
        if entries.len() != 1 {
            cx.err(
                &ip,
                item.pos,
                format!(
                    "each entry names exactly one policy, found {}",
                    entries.len()
                ),
            );
            continue;
        }
        let (name, kpos, config) = &entries[0];
        let np = join(&ip, name);
        let registered = cx
            .policies
            .filter(|_| !POLICY_NAMES.contains(&name.as_str()))
            .and_then(|r| r.get(name).ok());
        if let Some(policy) = registered {
            // A policy of the application's: configured where it was registered.
            let empty = matches!(&config.kind, Kind::Map(m) if m.is_empty())
                || matches!(config.kind, Kind::Null);
            if !empty {
                cx.err(
                    &np,
                    config.pos,
                    format!("`{name}` is a policy registered in code, configured there: give it an empty block, {{{name}: {{}}}}"),
                );
                return (None, None);
            }
            return (Some((name.clone(), policy)), None);
        }
        if !POLICY_NAMES.contains(&name.as_str()) {
            if let Some(s) = decode::suggest(name, POLICY_NAMES) {
                cx.err(
                    &np,
                    *kpos,
                    format!("unknown policy `{name}`; did you mean `{s}`?"),
                );
                return (None, None);
            }
            // gRPC: policies this client does not know are skipped.
            continue;
        }
        if name == "outlier_detection_experimental" {
            return outlier_detection(cx, config, &np);
        }
        return (policy(cx, name, config, &np, *kpos), None);
    }
    if !items.is_empty() {
        cx.err(
            path,
            node.pos,
            format!(
                "no policy meshless knows; known: {}",
                POLICY_NAMES.join(", ")
            ),
        );
    }
    (None, None)
}

/// One policy and its config, by gRPC's (or meshless's) names.
fn policy(cx: &mut Cx<'_>, name: &str, config: &Node, path: &str, pos: Pos) -> Option<NamedPolicy> {
    let built: Arc<dyn Policy> = match name {
        "pick_first" => {
            let o = Obj::new(cx, config, path, &["shuffleAddressList"])?;
            let mut c = PickFirstConfig::default();
            if let Some((n, p)) = o.get("shuffleAddressList") {
                c = c.shuffle_address_list(decode::boolean(cx, n, &p)?);
            }
            c.into()
        }
        "round_robin" => {
            Obj::new(cx, config, path, &[])?;
            Arc::new(RoundRobin)
        }
        "weighted_round_robin" => {
            Obj::new(cx, config, path, &[])?;
            WeightedRoundRobinConfig::default().into()
        }
        "ring_hash" | "ring_hash_experimental" | "consistent_hash" | "maglev" => {
            let ring = name != "maglev";
            let allowed: &[&str] = if ring {
                &["minRingSize", "maxRingSize", "requestHashHeader"]
            } else {
                &["minTableSize", "maxTableSize", "requestHashHeader"]
            };
            let o = Obj::new(cx, config, path, allowed)?;
            let mut key = HashKeyConfig::default();
            if let Some((n, p)) = o.get("requestHashHeader") {
                let h = decode::string(cx, n, &p)?;
                match http::HeaderName::try_from(h.to_ascii_lowercase()) {
                    Ok(h) => key = key.request_hash_header(h),
                    Err(_) => {
                        cx.err(&p, n.pos, format!("`{h}` is not a valid header name"));
                        return None;
                    }
                }
            }
            let (lo_key, hi_key) = (allowed[0], allowed[1]);
            let lo = o
                .get(lo_key)
                .and_then(|(n, p)| decode::int(cx, n, &p, 1, 8_388_608));
            let hi = o
                .get(hi_key)
                .and_then(|(n, p)| decode::int(cx, n, &p, 1, 8_388_608));
            if let (Some(l), Some(h)) = (lo, hi)
                && l > h
            {
                cx.err(path, pos, format!("{lo_key} ({l}) is above {hi_key} ({h})"));
                return None;
            }
            if ring {
                let mut c = RingHashConfig::default().key(key);
                if let Some(l) = lo {
                    c = c.min_ring_size(l as usize);
                }
                if let Some(h) = hi {
                    c = c.max_ring_size(h as usize);
                }
                c.into()
            } else {
                let mut c = MaglevConfig::default().key(key);
                if let Some(l) = lo {
                    c = c.min_table_size(l as u64);
                }
                if let Some(h) = hi {
                    c = c.max_table_size(h as u64);
                }
                c.into()
            }
        }
        "least_request" | "least_request_experimental" => {
            let o = Obj::new(cx, config, path, &["choiceCount"])?;
            let mut c = LeastRequestConfig::default();
            if let Some((n, p)) = o.get("choiceCount") {
                c = c.choice_count(decode::int(cx, n, &p, 2, 10)? as u32);
            }
            c.into()
        }
        "p2c_ewma" => {
            let o = Obj::new(
                cx,
                config,
                path,
                &[
                    "decay",
                    "defaultRtt",
                    "failurePenalty",
                    "choiceCount",
                    "memory",
                    "loadScale",
                ],
            )?;
            let mut c = P2cEwmaConfig::default();
            if let Some((n, p)) = o.get("decay") {
                c = c.decay(positive(cx, n, &p)?);
            }
            if let Some((n, p)) = o.get("defaultRtt") {
                c = c.default_rtt(positive(cx, n, &p)?);
            }
            if let Some((n, p)) = o.get("failurePenalty") {
                c = c.failure_penalty(decode::duration(cx, n, &p)?);
            }
            if let Some((n, p)) = o.get("choiceCount") {
                c = c.choice_count(decode::int(cx, n, &p, 2, 10)? as u32);
            }
            if let Some((n, p)) = o.get("memory") {
                c = c.memory(decode::boolean(cx, n, &p)?);
            }
            if let Some((n, p)) = o.get("loadScale") {
                c = c.load_scale(decode::int(cx, n, &p, 0, 1_000_000)? as u32);
            }
            c.into()
        }
        "random" => {
            let o = Obj::new(cx, config, path, &["weighted"])?;
            let mut c = RandomConfig::default();
            if let Some((n, p)) = o.get("weighted") {
                c = c.weighted(decode::boolean(cx, n, &p)?);
            }
            c.into()
        }
        other => {
            cx.err(path, pos, decode::unknown_key(other, POLICY_NAMES));
            return None;
        }
    };
    let canonical = match name {
        "ring_hash_experimental" | "consistent_hash" => "ring_hash",
        "least_request_experimental" => "least_request",
        n => n,
    };
    Some((canonical.to_owned(), built))
}

/// The keys of A50's `successRateEjection` and `failurePercentageEjection` objects.
const SUCCESS_RATE_KEYS: [&str; 4] = [
    "stdevFactor",
    "enforcementPercentage",
    "minimumHosts",
    "requestVolume",
];
const FAILURE_PERCENTAGE_KEYS: [&str; 4] = [
    "threshold",
    "enforcementPercentage",
    "minimumHosts",
    "requestVolume",
];

/// Decodes each `(key, max, field)` of `s` present as an integer in `0..=max` into its
/// field; absent keys leave their defaults, bad values are reported by `decode::int`.
fn set_u32s<const N: usize>(cx: &mut Cx<'_>, s: &Obj<'_>, fields: [(&str, i128, &mut u32); N]) {
    for (key, max, field) in fields {
        if let Some(v) = s.get(key).and_then(|(n, p)| decode::int(cx, n, &p, 0, max)) {
            *field = v as u32;
        }
    }
}

/// `outlier_detection_experimental`: A50's fields, meshless's `consecutiveFailures`, and
/// the `childPolicy` it wraps.
fn outlier_detection(cx: &mut Cx<'_>, node: &Node, path: &str) -> Balancing {
    let Some(o) = Obj::new(
        cx,
        node,
        path,
        &[
            "interval",
            "baseEjectionTime",
            "maxEjectionTime",
            "maxEjectionPercent",
            "successRateEjection",
            "failurePercentageEjection",
            "consecutiveFailures",
            "childPolicy",
        ],
    ) else {
        return (None, None);
    };
    // A50: an algorithm is on only when its block is present.
    let mut od = OutlierDetection::default()
        .success_rate(None)
        .failure_percentage(None)
        .consecutive_failures(None);
    if let Some((n, p)) = o.get("interval")
        && let Some(d) = positive(cx, n, &p)
    {
        od = od.interval(d);
    }
    let base = o
        .get("baseEjectionTime")
        .and_then(|(n, p)| positive(cx, n, &p))
        .unwrap_or(od.base_ejection_time);
    let max = o
        .get("maxEjectionTime")
        .and_then(|(n, p)| positive(cx, n, &p))
        .unwrap_or(od.max_ejection_time);
    od = od.ejection_time(base, max);
    if let Some((n, p)) = o.get("maxEjectionPercent")
        && let Some(v) = decode::int(cx, n, &p, 0, 100)
    {
        od = od.max_ejection_percent(v as u32);
    }
    const ANY: i128 = u32::MAX as i128;
    if let Some((n, p)) = o.get("successRateEjection")
        && let Some(s) = Obj::new(cx, n, &p, &SUCCESS_RATE_KEYS)
    {
        let mut e = SuccessRateEjection::default();
        let f = &mut e;
        set_u32s(
            cx,
            &s,
            [
                ("stdevFactor", ANY, &mut f.stdev_factor),
                ("enforcementPercentage", 100, &mut f.enforcement_percentage),
                ("minimumHosts", ANY, &mut f.minimum_hosts),
                ("requestVolume", ANY, &mut f.request_volume),
            ],
        );
        od = od.success_rate(Some(e));
    }
    if let Some((n, p)) = o.get("failurePercentageEjection")
        && let Some(s) = Obj::new(cx, n, &p, &FAILURE_PERCENTAGE_KEYS)
    {
        let mut e = FailurePercentageEjection::default();
        let f = &mut e;
        set_u32s(
            cx,
            &s,
            [
                ("threshold", 100, &mut f.threshold),
                ("enforcementPercentage", 100, &mut f.enforcement_percentage),
                ("minimumHosts", ANY, &mut f.minimum_hosts),
                ("requestVolume", ANY, &mut f.request_volume),
            ],
        );
        od = od.failure_percentage(Some(e));
    }
    if let Some((n, p)) = o.get("consecutiveFailures")
        && let Some(v) = decode::int(cx, n, &p, 1, 1_000_000)
    {
        od = od.consecutive_failures(Some(v as u32));
    }
    let child = match o.get("childPolicy") {
        Some((n, p)) => load_balancing_config(cx, n, &p).0,
        None => None,
    };
    (child, Some(od))
}

/// `methodConfig`: per-method timeout, retries or hedging.
fn method_config(cx: &mut Cx<'_>, node: &Node, path: &str) -> MethodPolicies {
    let mut methods = MethodPolicies::new();
    let mut seen: Vec<(Option<String>, Option<String>)> = Vec::new();
    for (i, entry) in decode::list(cx, node, path).iter().enumerate() {
        let ep = format!("{path}[{i}]");
        let Some(o) = Obj::new(
            cx,
            entry,
            &ep,
            &[
                "name",
                "timeout",
                "waitForReady",
                "retryPolicy",
                "hedgingPolicy",
                "maxRequestMessageBytes",
                "maxResponseMessageBytes",
            ],
        ) else {
            continue;
        };
        let mut policy = MethodPolicy::new();
        if let Some((n, p)) = o.get("timeout")
            && let Some(d) = positive(cx, n, &p)
        {
            policy = policy.timeout(d);
        }
        if let Some((n, p)) = o.get("waitForReady")
            && let Some(on) = decode::boolean(cx, n, &p)
        {
            policy = policy.wait_for_ready(on);
        }
        let size = |cx: &mut Cx<'_>, key: &str| {
            o.get(key).and_then(|(n, p)| {
                decode::int(cx, n, &p, 0, i128::from(u32::MAX)).map(|v| v as usize)
            })
        };
        let (req, resp) = (
            size(cx, "maxRequestMessageBytes"),
            size(cx, "maxResponseMessageBytes"),
        );
        if req.is_some() || resp.is_some() {
            policy = policy.max_message_bytes(req, resp);
        }
        let retry = o.get("retryPolicy");
        let hedge = o.get("hedgingPolicy");
        if let (Some(_), Some((n, p))) = (&retry, &hedge) {
            cx.err(
                p,
                n.pos,
                "retryPolicy and hedgingPolicy cannot both be set on one method (gRPC)",
            );
        } else if let Some((n, p)) = retry {
            if let Some(r) = retry_policy(cx, n, &p) {
                policy = policy.retry(r);
            }
        } else if let Some((n, p)) = hedge
            && let Some(h) = hedging_policy(cx, n, &p)
        {
            policy = policy.hedge(h);
        }
        let names = match o.get("name") {
            Some((n, p)) => names(cx, n, &p),
            None => {
                cx.err(&ep, entry.pos, "a methodConfig entry needs `name`: [{service: ..., method: ...}], or [{}] for the default");
                continue;
            }
        };
        for (service, method, pos, np) in names {
            if seen.contains(&(service.clone(), method.clone())) {
                cx.err(
                    &np,
                    pos,
                    format!(
                        "duplicate method name: {} is already configured",
                        describe_name(&service, &method)
                    ),
                );
                continue;
            }
            seen.push((service.clone(), method.clone()));
            methods = match (service, method) {
                (None, _) => methods.default_policy(policy.clone()),
                (Some(s), None) => methods.service(s, policy.clone()),
                (Some(s), Some(m)) => methods.method(s, m, policy.clone()),
            };
        }
    }
    methods
}

fn describe_name(service: &Option<String>, method: &Option<String>) -> String {
    match (service, method) {
        (None, _) => "the default entry".into(),
        (Some(s), None) => format!("service {s}"),
        (Some(s), Some(m)) => format!("{s}/{m}"),
    }
}

type Name = (Option<String>, Option<String>, Pos, String);

fn names(cx: &mut Cx<'_>, node: &Node, path: &str) -> Vec<Name> {
    let mut out = Vec::new();
    let items = decode::list(cx, node, path);
    if matches!(node.kind, Kind::Seq(_)) && items.is_empty() {
        cx.err(
            path,
            node.pos,
            "an empty list matches no method: give [{}] for the default entry",
        );
    }
    for (i, n) in items.iter().enumerate() {
        let np = format!("{path}[{i}]");
        let Some(o) = Obj::new(cx, n, &np, &["service", "method"]) else {
            continue;
        };
        let service = o
            .get("service")
            .and_then(|(n, p)| decode::string(cx, n, &p));
        let method = o.get("method").and_then(|(n, p)| decode::string(cx, n, &p));
        let service = service.filter(|s| !s.is_empty());
        let method = method.filter(|m| !m.is_empty());
        if service.is_none() && method.is_some() {
            cx.err(&np, n.pos, "a method needs its service");
            continue;
        }
        out.push((service, method, n.pos, np));
    }
    out
}

fn retry_policy(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<RetryPolicy> {
    let o = Obj::new(
        cx,
        node,
        path,
        &[
            "maxAttempts",
            "initialBackoff",
            "maxBackoff",
            "backoffMultiplier",
            "retryableStatusCodes",
        ],
    )?;
    let codes = match o.get("retryableStatusCodes") {
        Some((n, p)) => codes(cx, n, &p)?,
        None => {
            cx.err(
                path,
                o.pos,
                "retryPolicy needs retryableStatusCodes, such as [UNAVAILABLE]",
            );
            return None;
        }
    };
    let mut r = RetryPolicy::new(codes)
        .map_err(|e| {
            let (n, p) = o.get("retryableStatusCodes").expect("checked above");
            cx.err(&p, n.pos, e.to_string());
        })
        .ok()?;
    match o.get("maxAttempts") {
        Some((n, p)) => {
            let v = decode::int(cx, n, &p, i128::MIN, i128::MAX)?;
            r = r
                .max_attempts(u32::try_from(v).unwrap_or(0))
                .map_err(|e| cx.err(&p, n.pos, e.to_string()))
                .ok()?;
        }
        None => {
            cx.err(
                path,
                o.pos,
                "retryPolicy needs maxAttempts (2 or more; above 5 counts as 5)",
            );
            return None;
        }
    }
    let need = |cx: &mut Cx<'_>, key: &str| match o.get(key) {
        Some((n, p)) => decode::duration(cx, n, &p).map(|d| (d, n.pos, p)),
        None => {
            cx.err(path, o.pos, format!("retryPolicy needs {key}"));
            None
        }
    };
    let initial = need(cx, "initialBackoff");
    let max = need(cx, "maxBackoff");
    let multiplier = match o.get("backoffMultiplier") {
        Some((n, p)) => decode::number(cx, n, &p).map(|m| (m, n.pos, p)),
        None => {
            cx.err(path, o.pos, "retryPolicy needs backoffMultiplier");
            None
        }
    };
    let ((i, ip, ipath), (m, _, _), (x, _, _)) = (initial?, max?, multiplier?);
    r.backoff(i, m, x)
        .map_err(|e| cx.err(&ipath, ip, e.to_string()))
        .ok()
}

fn hedging_policy(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<HedgingPolicy> {
    let o = Obj::new(
        cx,
        node,
        path,
        &["maxAttempts", "hedgingDelay", "nonFatalStatusCodes"],
    )?;
    let attempts = match o.get("maxAttempts") {
        Some((n, p)) => (decode::int(cx, n, &p, i128::MIN, i128::MAX)?, n.pos, p),
        None => {
            cx.err(
                path,
                o.pos,
                "hedgingPolicy needs maxAttempts (2 or more; above 5 counts as 5)",
            );
            return None;
        }
    };
    let delay = match o.get("hedgingDelay") {
        Some((n, p)) => match &n.kind {
            Kind::Str(s) if s.trim().eq_ignore_ascii_case("p95") => {
                HedgeDelay::p95(Duration::from_millis(50))
            }
            _ => HedgeDelay::Fixed(decode::duration(cx, n, &p)?),
        },
        None => HedgeDelay::Fixed(Duration::ZERO),
    };
    let non_fatal = match o.get("nonFatalStatusCodes") {
        Some((n, p)) => codes(cx, n, &p)?,
        None => Vec::new(),
    };
    HedgingPolicy::new(u32::try_from(attempts.0).unwrap_or(0), delay, non_fatal)
        .map_err(|e| cx.err(&attempts.2, attempts.1, e.to_string()))
        .ok()
}

/// Status codes by gRPC name (`UNAVAILABLE`) or number (14).
fn codes(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Vec<Code>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (i, n) in decode::list(cx, node, path).iter().enumerate() {
        let p = format!("{path}[{i}]");
        let code = match &n.kind {
            Kind::Int(v) if (0..=16).contains(v) => Some(Code::from_i32(*v as i32)),
            Kind::Str(s) => meshless_balancer::code_from_name(s),
            _ => None,
        };
        match code {
            Some(c) => out.push(c),
            None => {
                ok = false;
                let shown = match &n.kind {
                    Kind::Str(s) => s.clone(),
                    Kind::Int(v) => v.to_string(),
                    other => other.describe().to_owned(),
                };
                let hint = match &n.kind {
                    Kind::Str(s) => decode::suggest(s, &meshless_balancer::CODE_NAMES)
                        .map(|c| format!("; did you mean {c}?"))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                cx.err(&p, n.pos, format!("`{shown}` is not a gRPC status code (names such as UNAVAILABLE, or 0 to 16){hint}"));
            }
        }
    }
    ok.then_some(out)
}

// ===== discovery blocks =====

/// A `discovery:` block: one backend's settings, turned into the target it stands for.
/// etcd takes go-zero's `EtcdConf` field names, so a go-zero `RpcClientConf.Etcd` block can
/// be pasted in.
fn discovery(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<String> {
    const BACKENDS: &[&str] = &["etcd", "kubernetes", "dns", "consul", "static"];
    let o = Obj::new(cx, node, path, BACKENDS)?;
    let given: Vec<&str> = BACKENDS
        .iter()
        .copied()
        .filter(|b| o.get(b).is_some())
        .collect();
    if given.len() != 1 {
        cx.err(
            path,
            o.pos,
            format!(
                "give exactly one backend ({}), found {}",
                BACKENDS.join(", "),
                given.len()
            ),
        );
        return None;
    }
    let (n, p) = o.get(given[0])?;
    match given[0] {
        "etcd" => etcd(cx, n, &p),
        "kubernetes" => {
            let k = Obj::new(cx, n, &p, &["service", "namespace", "port"])?;
            let service = required_string(cx, &k, &p, "service")?;
            let port = port_or_name(cx, &k, &p)?;
            Some(
                match k
                    .get("namespace")
                    .and_then(|(n, p)| decode::string(cx, n, &p))
                {
                    Some(ns) => format!("kubernetes:///{service}.{ns}:{port}"),
                    None => format!("kubernetes:///{service}:{port}"),
                },
            )
        }
        "dns" => {
            let d = Obj::new(cx, n, &p, &["host", "port", "server", "srv"])?;
            let host = required_string(cx, &d, &p, "host")?;
            let srv = match d.get("srv") {
                Some((n, p)) => decode::boolean(cx, n, &p)?,
                None => false,
            };
            let server = d.get("server").and_then(|(n, p)| decode::string(cx, n, &p));
            if srv {
                if d.get("port").is_some() {
                    cx.err(
                        &p,
                        n.pos,
                        "an SRV lookup takes its ports from the records: drop `port`",
                    );
                    return None;
                }
                return Some(format!("dns+srv://{}/{host}", server.unwrap_or_default()));
            }
            let port = d
                .get("port")
                .and_then(|(n, p)| decode::int(cx, n, &p, 1, 65_535));
            let port = match port {
                Some(p) => format!(":{p}"),
                None => String::new(),
            };
            Some(format!("dns://{}/{host}{port}", server.unwrap_or_default()))
        }
        "consul" => {
            let c = Obj::new(
                cx,
                n,
                &p,
                &[
                    "address",
                    "service",
                    "tags",
                    "token",
                    "datacenter",
                    "health",
                    "format",
                ],
            )?;
            let address = required_string(cx, &c, &p, "address")?;
            let service = required_string(cx, &c, &p, "service")?;
            let mut query = Vec::new();
            if let Some((n, p)) = c.get("tags") {
                for (i, t) in decode::list(cx, n, &p).iter().enumerate() {
                    if let Some(t) = decode::string(cx, t, &format!("{p}[{i}]")) {
                        query.push(("tag", t));
                    }
                }
            }
            for (key, param) in [
                ("token", "token"),
                ("datacenter", "dc"),
                ("health", "health"),
                ("format", "format"),
            ] {
                if let Some((n, p)) = c.get(key)
                    && let Some(v) = decode::string(cx, n, &p)
                {
                    query.push((param, v));
                }
            }
            let address = address.trim_start_matches("http://");
            Some(with_query(format!("consul://{address}/{service}"), &query))
        }
        "static" => {
            let mut addrs = Vec::new();
            for (i, a) in decode::list(cx, n, &p).iter().enumerate() {
                addrs.extend(decode::string(cx, a, &format!("{p}[{i}]")));
            }
            if addrs.is_empty() {
                cx.err(&p, n.pos, "a static list needs at least one host:port");
                return None;
            }
            Some(format!("static:///{}", addrs.join(",")))
        }
        _ => None,
    }
}

/// go-zero's `EtcdConf`: `Hosts`, `Key`, `ID`, `User`, `Pass`, `CertFile`, `CertKeyFile`,
/// `CACertFile`, `InsecureSkipVerify`; and meshless's `Format` (`go-zero` or `kratos`).
fn etcd(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<String> {
    let e = Obj::new(
        cx,
        node,
        path,
        &[
            "Hosts",
            "Key",
            "ID",
            "User",
            "Pass",
            "CertFile",
            "CertKeyFile",
            "CACertFile",
            "InsecureSkipVerify",
            "Format",
        ],
    )?;
    let hosts = match e.get("Hosts") {
        Some((n, p)) => decode::list(cx, n, &p)
            .iter()
            .enumerate()
            .filter_map(|(i, h)| decode::string(cx, h, &format!("{p}[{i}]")))
            .collect::<Vec<_>>(),
        None => Vec::new(),
    };
    if hosts.is_empty() {
        cx.err(path, e.pos, "etcd needs Hosts, such as [etcd-0:2379]");
        return None;
    }
    let key = required_string(cx, &e, path, "Key")?;
    if e.get("ID").is_some() {
        let (n, p) = e.get("ID")?;
        cx.err(&p, n.pos, "ID selects one instance of a go-zero server (direct call to an ID); meshless balances over all of them: drop it");
        return None;
    }
    let mut query = vec![("key", key)];
    for (field, param) in [
        ("User", "user"),
        ("Pass", "password"),
        ("CACertFile", "ca-file"),
        ("CertFile", "cert-file"),
        ("CertKeyFile", "key-file"),
        ("Format", "format"),
    ] {
        if let Some((n, p)) = e.get(field)
            && let Some(v) = decode::string(cx, n, &p)
        {
            query.push((param, v));
        }
    }
    if let Some((n, p)) = e.get("InsecureSkipVerify")
        && decode::boolean(cx, n, &p)?
    {
        query.push(("insecure-skip-verify", "true".into()));
    }
    Some(with_query(format!("etcd:///{}", hosts.join(",")), &query))
}

fn required_string(cx: &mut Cx<'_>, o: &Obj<'_>, path: &str, key: &str) -> Option<String> {
    match o.get(key) {
        Some((n, p)) => decode::string(cx, n, &p),
        None => {
            cx.err(path, o.pos, format!("needs `{key}`"));
            None
        }
    }
}

/// A Kubernetes port: a number or the port's name.
fn port_or_name(cx: &mut Cx<'_>, o: &Obj<'_>, path: &str) -> Option<String> {
    match o.get("port") {
        Some((n, p)) => match &n.kind {
            Kind::Int(_) => decode::int(cx, n, &p, 1, 65_535).map(|v| v.to_string()),
            _ => decode::string(cx, n, &p),
        },
        None => {
            cx.err(
                path,
                o.pos,
                "needs `port`: the Service port's number or name",
            );
            None
        }
    }
}

/// `base?k=v&...`, each value percent-encoded.
fn with_query(base: String, query: &[(&str, String)]) -> String {
    if query.is_empty() {
        return base;
    }
    let q: Vec<String> = query
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect();
    format!("{base}?{}", q.join("&"))
}
