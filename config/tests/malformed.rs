//! Malformed config files, each with the exact error it must produce: position, key path
//! and message. A key silently ignored is the failure users of go-zero, kratos and gRPC
//! meet most, so unknown keys are errors everywhere.

use meshless_config::{Config, Format};

fn env(k: &str) -> Option<String> {
    match k {
        "PORT" => Some("50051".into()),
        "ATTEMPTS" => Some("many".into()),
        _ => None,
    }
}

/// Parses `text` and returns its errors, one per line.
fn errors(format: Format, text: &str) -> String {
    match Config::from_str_with_env(text, format, &env) {
        Ok(_) => "OK".into(),
        Err(e) => e.to_string(),
    }
}

const Y: Format = Format::Yaml;

/// A client named `c` with `body` indented under it (4 spaces), after a valid target on
/// line 3: the body starts on line 4.
fn client(body: &str) -> String {
    let mut s = String::from("clients:\n  c:\n    target: static:///127.0.0.1:1\n");
    for l in body.lines() {
        s.push_str("    ");
        s.push_str(l);
        s.push('\n');
    }
    s
}

#[test]
fn every_malformed_file_gets_its_error_and_position() {
    let sc = |body: &str| client(&format!("serviceConfig:\n{}", indent(body)));
    let cases: Vec<(&str, Format, String, &str)> = vec![
        (
            "unknown top-level key",
            Y,
            "client:\n  c: {}\n".into(),
            "1:1: client: unknown key `client`; did you mean `clients`?",
        ),
        (
            "no clients",
            Y,
            "defaults: {}\n".into(),
            "clients: the file has no `clients` map",
        ),
        (
            "clients not a map",
            Y,
            "clients: [a, b]\n".into(),
            "1:10: clients: expected a map of names, found a list",
        ),
        (
            "null client name",
            Y,
            "clients:\n  ~: {target: dns:///x:1}\n".into(),
            "2:3: clients: <an empty key> is not a name",
        ),
        (
            "client without target",
            Y,
            "clients:\n  c:\n    connectTimeout: 1s\n".into(),
            "2:3: clients.c: a client needs a `target`",
        ),
        (
            "unknown client key with suggestion",
            Y,
            client("conectTimeout: 1s"),
            "4:5: clients.c.conectTimeout: unknown key `conectTimeout`; did you mean `connectTimeout`?",
        ),
        (
            "unknown key without a close one",
            Y,
            client("colour: blue"),
            "4:5: clients.c.colour: unknown key `colour`; expected one of target,",
        ),
        (
            "duplicate key",
            Y,
            client("connectTimeout: 1s\nconnectTimeout: 2s"),
            "5:5: duplicate mapping key: connectTimeout",
        ),
        (
            "duration without unit",
            Y,
            client("connectTimeout: 5"),
            "4:21: clients.c.connectTimeout: a duration needs a unit",
        ),
        (
            "bad duration unit",
            Y,
            client("connectTimeout: 5 secs"),
            "clients.c.connectTimeout: `5 secs`: unknown unit",
        ),
        (
            "negative duration",
            Y,
            client("queueTimeout: -1s"),
            "clients.c.queueTimeout: `-1s`: a duration cannot be negative",
        ),
        (
            "zero timeout",
            Y,
            client("connectTimeout: 0s"),
            "4:21: clients.c.connectTimeout: must be above zero",
        ),
        (
            "wrong type for a map",
            Y,
            client("keepalive: 30s"),
            "4:16: clients.c.keepalive: expected a map, found a string",
        ),
        (
            "keepalive without time",
            Y,
            client("keepalive:\n  timeout: 5s"),
            "clients.c.keepalive: keepalive needs `time`",
        ),
        (
            "backoff multiplier below 1",
            Y,
            client("backoff:\n  multiplier: 0.5"),
            "5:19: clients.c.backoff.multiplier: must be at least 1, got 0.5",
        ),
        (
            "jitter out of range",
            Y,
            client("backoff:\n  jitter: 2"),
            "clients.c.backoff.jitter: must be between 0 and 1, got 2",
        ),
        (
            "http2 frame size out of range",
            Y,
            client("http2:\n  maxFrameSize: 100"),
            "5:21: clients.c.http2.maxFrameSize: 100 is out of range: must be 16384 to 16777215",
        ),
        (
            "tls cert without key",
            Y,
            client("tls:\n  certFile: a.pem"),
            "clients.c.tls: a client identity needs both certFile and keyFile",
        ),
        (
            "missing env var",
            Y,
            client("authority: ${HOST}"),
            "4:16: clients.c.authority: environment variable HOST is not set (set it, or give a default: ${HOST:-value})",
        ),
        (
            "env var that is not a number",
            Y,
            client("maxRequests: ${ATTEMPTS}"),
            "clients.c.maxRequests: expected a whole number, found `many`",
        ),
        (
            "unclosed placeholder",
            Y,
            client("authority: ${PORT"),
            "clients.c.authority: `${PORT`: a `${` without its closing `}`",
        ),
        (
            "target in defaults",
            Y,
            "defaults:\n  target: dns:///x:1\nclients:\n  c:\n    target: dns:///y:1\n".into(),
            "2:11: defaults.target: a target belongs to a client, not to the defaults",
        ),
        (
            "unknown service config key",
            Y,
            sc("loadBalancingConfg: []"),
            "clients.c.serviceConfig.loadBalancingConfg: unknown key `loadBalancingConfg`; did you mean `loadBalancingConfig`?",
        ),
        (
            "policy typo",
            Y,
            sc("loadBalancingConfig: [{round_robbin: {}}]"),
            "clients.c.serviceConfig.loadBalancingConfig[0].round_robbin: unknown policy `round_robbin`; did you mean `round_robin`?",
        ),
        (
            "no known policy",
            Y,
            sc("loadBalancingConfig: [{xds_wrr_locality_experimental: {}}]"),
            "clients.c.serviceConfig.loadBalancingConfig: no policy meshless knows",
        ),
        (
            "policy entry with two names",
            Y,
            sc("loadBalancingConfig: [{round_robin: {}, pick_first: {}}]"),
            "clients.c.serviceConfig.loadBalancingConfig[0]: each entry names exactly one policy, found 2",
        ),
        (
            "unknown policy field",
            Y,
            sc("loadBalancingConfig: [{ring_hash_experimental: {minRingSze: 10}}]"),
            "clients.c.serviceConfig.loadBalancingConfig[0].ring_hash_experimental.minRingSze: unknown key `minRingSze`; did you mean `minRingSize`?",
        ),
        (
            "ring sizes reversed",
            Y,
            sc("loadBalancingConfig: [{ring_hash: {minRingSize: 1000, maxRingSize: 10}}]"),
            "minRingSize (1000) is above maxRingSize (10)",
        ),
        (
            "ring size out of range",
            Y,
            sc("loadBalancingConfig: [{ring_hash: {maxRingSize: 0}}]"),
            "clients.c.serviceConfig.loadBalancingConfig[0].ring_hash.maxRingSize: 0 is out of range: must be 1 to 8388608",
        ),
        (
            "choiceCount out of range",
            Y,
            sc("loadBalancingConfig: [{least_request_experimental: {choiceCount: 50}}]"),
            "choiceCount: 50 is out of range: must be 2 to 10",
        ),
        (
            "maxAttempts below 2",
            Y,
            sc(
                "methodConfig:\n  - name: [{}]\n    retryPolicy: {maxAttempts: 1, initialBackoff: 1s, maxBackoff: 2s, backoffMultiplier: 2, retryableStatusCodes: [UNAVAILABLE]}",
            ),
            "clients.c.serviceConfig.methodConfig[0].retryPolicy.maxAttempts: retryPolicy.maxAttempts: must be 2 or more",
        ),
        (
            "empty retryable codes",
            Y,
            sc(
                "methodConfig:\n  - name: [{}]\n    retryPolicy: {maxAttempts: 3, initialBackoff: 1s, maxBackoff: 2s, backoffMultiplier: 2, retryableStatusCodes: []}",
            ),
            "retryableStatusCodes: retryPolicy.retryableStatusCodes: must list at least one status code",
        ),
        (
            "zero backoff",
            Y,
            sc(
                "methodConfig:\n  - name: [{}]\n    retryPolicy: {maxAttempts: 3, initialBackoff: 0s, maxBackoff: 2s, backoffMultiplier: 2, retryableStatusCodes: [UNAVAILABLE]}",
            ),
            "initialBackoff: retryPolicy.initialBackoff: must be above zero",
        ),
        (
            "unknown status code",
            Y,
            sc(
                "methodConfig:\n  - name: [{}]\n    retryPolicy: {maxAttempts: 3, initialBackoff: 1s, maxBackoff: 2s, backoffMultiplier: 2, retryableStatusCodes: [UNAVAILABLE, UNAVAILIBLE]}",
            ),
            "retryableStatusCodes[1]: `UNAVAILIBLE` is not a gRPC status code (names such as UNAVAILABLE, or 0 to 16); did you mean UNAVAILABLE?",
        ),
        (
            "missing retry field",
            Y,
            sc(
                "methodConfig:\n  - name: [{}]\n    retryPolicy: {maxAttempts: 3, maxBackoff: 2s, backoffMultiplier: 2, retryableStatusCodes: [UNAVAILABLE]}",
            ),
            "clients.c.serviceConfig.methodConfig[0].retryPolicy: retryPolicy needs initialBackoff",
        ),
        (
            "retry and hedging",
            Y,
            sc(
                "methodConfig:\n  - name: [{}]\n    retryPolicy: {maxAttempts: 3, initialBackoff: 1s, maxBackoff: 2s, backoffMultiplier: 2, retryableStatusCodes: [UNAVAILABLE]}\n    hedgingPolicy: {maxAttempts: 2}",
            ),
            "hedgingPolicy: retryPolicy and hedgingPolicy cannot both be set on one method",
        ),
        (
            "duplicate method name",
            Y,
            sc(
                "methodConfig:\n  - name: [{service: a.A}]\n    timeout: 1s\n  - name: [{service: a.A}]\n    timeout: 2s",
            ),
            "clients.c.serviceConfig.methodConfig[1].name[0]: duplicate method name: service a.A is already configured",
        ),
        (
            "method without service",
            Y,
            sc("methodConfig:\n  - name: [{method: Get}]\n    timeout: 1s"),
            "methodConfig[0].name[0]: a method needs its service",
        ),
        (
            "methodConfig entry without name",
            Y,
            sc("methodConfig:\n  - timeout: 1s"),
            "clients.c.serviceConfig.methodConfig[0]: a methodConfig entry needs `name`",
        ),
        (
            "maxTokens out of range",
            Y,
            sc("retryThrottling: {maxTokens: 5000, tokenRatio: 0.1}"),
            "retryThrottling.maxTokens: 5000 is out of range: must be 1 to 1000",
        ),
        (
            "tokenRatio too small",
            Y,
            sc("retryThrottling: {maxTokens: 10, tokenRatio: 0.0001}"),
            "retryThrottling.tokenRatio: retryThrottling.tokenRatio: must be a number of at least 0.001",
        ),
        (
            "waitForReady not a boolean",
            Y,
            sc("methodConfig:\n  - name: [{}]\n    waitForReady: yes please"),
            "waitForReady: expected true or false, found `yes please`",
        ),
        (
            "hedging attempts below 2",
            Y,
            sc(
                "methodConfig:\n  - name: [{}]\n    hedgingPolicy: {maxAttempts: 1, hedgingDelay: 10ms}",
            ),
            "hedgingPolicy.maxAttempts: hedgingPolicy.maxAttempts: must be 2 or more",
        ),
        (
            "outlier percent out of range",
            Y,
            sc(
                "loadBalancingConfig: [{outlier_detection_experimental: {maxEjectionPercent: 150, childPolicy: [{round_robin: {}}]}}]",
            ),
            "maxEjectionPercent: 150 is out of range: must be 0 to 100",
        ),
        (
            "YAML syntax",
            Y,
            "clients:\n  c: [unclosed\n".into(),
            "2:6: unclosed bracket",
        ),
        (
            "TOML syntax",
            Format::Toml,
            "[clients.c]\ntarget = \n".into(),
            "2:",
        ),
        (
            "TOML unknown key",
            Format::Toml,
            "[clients.c]\ntarget = \"static:///127.0.0.1:1\"\nconnect_timeout = \"1s\"\n".into(),
            "3:1: clients.c.connect_timeout: unknown key `connect_timeout`; did you mean `connectTimeout`?",
        ),
        (
            "JSON trailing comma",
            Format::Json,
            "{\"clients\": {\"c\": {\"target\": \"x\",}}}".into(),
            "1:",
        ),
        (
            "JSON wrong type",
            Format::Json,
            "{\"clients\": {\"c\": {\"target\": 5}}}".into(),
            "clients.c.target: expected a string, found a whole number",
        ),
    ];
    assert!(cases.len() >= 30);
    let mut failed = Vec::new();
    for (name, format, text, want) in &cases {
        let got = errors(*format, text);
        if !got.contains(want) {
            failed.push(format!("{name}:\n  want: {want}\n  got:  {got}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}

fn indent(body: &str) -> String {
    body.lines().map(|l| format!("  {l}\n")).collect()
}

/// Every problem of a file is reported at once, in file order.
#[test]
fn all_errors_at_once() {
    let text = client("conectTimeout: 1s\nqueueTimeout: soon\nmaxRequests: 0");
    let got = errors(Y, &text);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 3, "{got}");
    assert!(lines[0].starts_with("4:5: "), "{got}");
    assert!(
        lines[1].starts_with("5:19: clients.c.queueTimeout:"),
        "{got}"
    );
    assert!(lines[2].contains("maxRequests: 0 is out of range"), "{got}");
}

#[test]
fn a_file_names_itself_in_its_errors() {
    let dir = std::env::temp_dir().join(format!("meshless-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.yaml");
    std::fs::write(&path, client("colour: 1")).unwrap();
    let err = Config::from_file(&path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}:4:5: clients.c.colour", path.display())),
        "{err}"
    );
    let txt = dir.join("bad.ini");
    std::fs::write(&txt, "").unwrap();
    let err = Config::from_file(&txt).unwrap_err().to_string();
    assert!(err.contains("name it .yaml, .yml, .toml or .json"), "{err}");
    let err = Config::from_file(dir.join("missing.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read the file"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
