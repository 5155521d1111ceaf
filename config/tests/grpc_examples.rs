//! The service configs of gRPC's own documents (service_config.md, A6, A17, A42, A48, A50),
//! pasted as JSON into a client, parse and mean what gRPC says they mean.

use std::time::Duration;

use meshless_config::{Config, Format};
use meshless_middleware::{HedgeDelay, HedgingPolicy, MethodPolicy, RetryPolicy};
use meshless_transport::OutlierDetection;
use tonic::Code;

/// A YAML file with one client whose `serviceConfig` is `json` (JSON is YAML's flow style).
fn with(json: &str) -> Config {
    let text =
        format!("clients:\n  c:\n    target: static:///127.0.0.1:1\n    serviceConfig: {json}\n");
    Config::from_str(&text, Format::Yaml).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn service_config_md_names_and_timeout() {
    let c = with(
        r#"{"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": [{"name": [{"service": "foo", "method": "bar"}, {"service": "baz"}], "timeout": "1.0000000001s"}]}"#,
    );
    assert_eq!(c.policy("c"), Some("round_robin"));
    let m = c.methods("c").unwrap();
    // gRPC durations count whole nanoseconds: 1.0000000001 s is 1 s.
    let got = m.policy_for("/foo/bar").unwrap();
    assert_eq!(got, &MethodPolicy::new().timeout(Duration::from_secs(1)));
    assert_eq!(m.policy_for("/baz/any"), Some(got));
    assert_eq!(
        m.policy_for("/foo/other"),
        None,
        "only foo/bar and baz are named"
    );
}

#[test]
fn a6_retry_policy_and_throttling() {
    let c = with(
        r#"{"methodConfig": [{"name": [{"service": "EchoService"}], "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}], "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}"#,
    );
    let want = MethodPolicy::new().retry(
        RetryPolicy::new([Code::Unavailable])
            .unwrap()
            .max_attempts(4)
            .unwrap()
            .backoff(Duration::from_millis(100), Duration::from_secs(1), 2.0)
            .unwrap(),
    );
    assert_eq!(
        c.methods("c").unwrap().policy_for("/EchoService/Echo"),
        Some(&want)
    );
    assert_eq!(c.retry_throttling("c"), Some((10, 0.1)));
}

#[test]
fn a6_hedging_policy_and_numeric_codes() {
    let c = with(
        r#"{"methodConfig": [{"name": [{"service": "EchoService", "method": "Echo"}], "hedgingPolicy": {"maxAttempts": 4, "hedgingDelay": "0.5s", "nonFatalStatusCodes": ["UNAVAILABLE", "INTERNAL", 10]}}]}"#,
    );
    let want = MethodPolicy::new().hedge(
        HedgingPolicy::new(
            4,
            HedgeDelay::Fixed(Duration::from_millis(500)),
            [Code::Unavailable, Code::Internal, Code::Aborted],
        )
        .unwrap(),
    );
    assert_eq!(
        c.methods("c").unwrap().policy_for("/EchoService/Echo"),
        Some(&want)
    );
}

#[test]
fn a6_max_attempts_above_five_is_five() {
    let c = with(
        r#"{"methodConfig": [{"name": [{}], "retryPolicy": {"maxAttempts": 10, "initialBackoff": "1s", "maxBackoff": "2s", "backoffMultiplier": 1.5, "retryableStatusCodes": [14]}}]}"#,
    );
    let want = MethodPolicy::new().retry(
        RetryPolicy::new([Code::Unavailable])
            .unwrap()
            .max_attempts(5)
            .unwrap()
            .backoff(Duration::from_secs(1), Duration::from_secs(2), 1.5)
            .unwrap(),
    );
    assert_eq!(
        c.methods("c").unwrap().policy_for("/any.Service/Any"),
        Some(&want),
        "[{{}}] is the default entry"
    );
}

#[test]
fn a17_health_check_config() {
    let c = with(r#"{"healthCheckConfig": {"serviceName": "foo"}}"#);
    assert_eq!(c.health_check("c"), Some("foo"));
    let c = with(r#"{"healthCheckConfig": {}}"#);
    assert_eq!(
        c.health_check("c"),
        Some(""),
        "no name asks about the whole server"
    );
}

#[test]
fn a42_ring_hash_a48_least_request_and_pick_first() {
    let c = with(
        r#"{"loadBalancingConfig": [{"ring_hash_experimental": {"minRingSize": 1024, "maxRingSize": 4096}}]}"#,
    );
    assert_eq!(c.policy("c"), Some("ring_hash"));
    let c =
        with(r#"{"loadBalancingConfig": [{"least_request_experimental": {"choiceCount": 2}}]}"#);
    assert_eq!(c.policy("c"), Some("least_request"));
    let c = with(r#"{"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": true}}]}"#);
    assert_eq!(c.policy("c"), Some("pick_first"));
    // The first policy meshless knows wins; unknown ones before it are skipped (gRPC).
    let c = with(
        r#"{"loadBalancingConfig": [{"grpclb": {}}, {"round_robin": {}}, {"pick_first": {}}]}"#,
    );
    assert_eq!(c.policy("c"), Some("round_robin"));
}

#[test]
fn a50_outlier_detection_wraps_its_child() {
    let c = with(
        r#"{"loadBalancingConfig": [{"outlier_detection_experimental": {"interval": "10s", "baseEjectionTime": "30s", "maxEjectionTime": "300s", "maxEjectionPercent": 10, "successRateEjection": {"stdevFactor": 1900, "enforcementPercentage": 100, "minimumHosts": 5, "requestVolume": 100}, "childPolicy": [{"round_robin": {}}]}}]}"#,
    );
    assert_eq!(c.policy("c"), Some("round_robin"));
    let od = c.outlier_detection("c").unwrap();
    let want = OutlierDetection::default()
        .failure_percentage(None)
        .consecutive_failures(None);
    assert_eq!(
        od, &want,
        "only the algorithms whose blocks are present are on (A50)"
    );
}

#[test]
fn wait_for_ready_per_method() {
    let c = with(
        r#"{"methodConfig": [{"name": [{"service": "a.A"}], "waitForReady": true, "timeout": "2s"}]}"#,
    );
    let want = MethodPolicy::new()
        .wait_for_ready(true)
        .timeout(Duration::from_secs(2));
    assert_eq!(c.methods("c").unwrap().policy_for("/a.A/M"), Some(&want));
}

#[test]
fn message_size_limits_per_method() {
    let c = with(
        r#"{"methodConfig": [{"name": [{}], "maxRequestMessageBytes": 1024, "maxResponseMessageBytes": 4194304}]}"#,
    );
    let want = MethodPolicy::new().max_message_bytes(Some(1024), Some(4_194_304));
    assert_eq!(c.methods("c").unwrap().policy_for("/x.X/Y"), Some(&want));
}

/// A service config on its own (the JSON gRPC's resolvers carry), for a channel built in
/// code; its errors have positions too.
#[test]
fn a_service_config_alone() {
    let sc = meshless_config::ServiceConfig::from_json(
        r#"{"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": [{"name": [{"service": "a.A"}], "timeout": "2s"}]}"#,
    )
    .unwrap();
    let stack = sc.stack();
    assert_eq!(
        stack.method_policies().policy_for("/a.A/M"),
        Some(&MethodPolicy::new().timeout(Duration::from_secs(2)))
    );
    let err = meshless_config::ServiceConfig::from_json("{\n  \"methodConfg\": []\n}")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "2:3: methodConfg: unknown key `methodConfg`; did you mean `methodConfig`?"
    );
}

#[test]
fn a50_ejection_fields_land_where_they_belong() {
    let c = with(
        r#"{"loadBalancingConfig": [{"outlier_detection_experimental": {"successRateEjection": {"stdevFactor": 1500, "enforcementPercentage": 80, "minimumHosts": 4, "requestVolume": 50}, "failurePercentageEjection": {"threshold": 70, "enforcementPercentage": 90, "minimumHosts": 3, "requestVolume": 20}, "childPolicy": [{"round_robin": {}}]}}]}"#,
    );
    let od = c.outlier_detection("c").unwrap();
    let mut sr = meshless_transport::SuccessRateEjection::default();
    sr.stdev_factor = 1500;
    sr.enforcement_percentage = 80;
    sr.minimum_hosts = 4;
    sr.request_volume = 50;
    let mut fp = meshless_transport::FailurePercentageEjection::default();
    fp.threshold = 70;
    fp.enforcement_percentage = 90;
    fp.minimum_hosts = 3;
    fp.request_volume = 20;
    let want = OutlierDetection::default()
        .success_rate(Some(sr))
        .failure_percentage(Some(fp))
        .consecutive_failures(None);
    assert_eq!(od, &want);
}
