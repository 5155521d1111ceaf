//! Bad input and failures: one line on stderr and the documented exit code, never a panic.

mod common;

use common::{assert_one_line_error, closed_port, meshless};

/// Exit codes, as documented in `meshless --help` and the README.
const USAGE: i32 = 2;
const DISCOVERY: i32 = 3;
const CALLS: i32 = 4;

#[test]
fn malformed_targets_are_usage_errors_that_quote_the_bad_part() {
    for (target, wanted) in [
        ("10.0.0.1:50051", "has no scheme"),
        ("localhost:50051", "`static:///localhost:50051`?"),
        ("gopher:///x:1", "unknown scheme `gopher`"),
        ("ipv4:10.0.0.1", "`10.0.0.1` has no port"),
        ("ipv4:10.0.0.1:99999", "port `99999`"),
        ("static:///a:1,,b:2", "address #2 is empty"),
        ("", "empty target"),
    ] {
        for cmd in ["resolve", "watch", "bench"] {
            let out = meshless().args([cmd, target]).output().expect("run");
            assert_one_line_error(&out, USAGE, wanted);
        }
    }
}

#[test]
fn schemes_of_backends_not_built_name_their_feature() {
    #[cfg(not(feature = "dns"))]
    {
        let out = meshless()
            .args(["resolve", "dns:///greeter.local:50051"])
            .output()
            .expect("run");
        assert_one_line_error(&out, USAGE, "needs the `dns` cargo feature");
    }
    #[cfg(not(feature = "k8s"))]
    {
        let out = meshless()
            .args(["watch", "kubernetes:///greeter.prod:50051"])
            .output()
            .expect("run");
        assert_one_line_error(&out, USAGE, "needs the `k8s` cargo feature");
    }
}

#[test]
fn unknown_policy_lists_the_known_ones() {
    let out = meshless()
        .args(["bench", "--policy", "fastest", "static:///127.0.0.1:1"])
        .output()
        .expect("run");
    let line = assert_one_line_error(&out, USAGE, "unknown load-balancing policy `fastest`");
    for name in meshless::balancer::POLICY_NAMES {
        assert!(line.contains(name), "{line}");
    }
}

#[test]
fn bad_flags_are_one_line_usage_errors() {
    for (args, wanted) in [
        (&["resolve"][..], "<TARGET>"),
        (&["resolve", "--jsn", "static:///a:1"][..], "'--jsn'"),
        (
            &["bench", "--requests", "0", "static:///a:1"][..],
            "must be at least 1",
        ),
        (
            &["bench", "--concurrency", "0", "static:///a:1"][..],
            "--concurrency",
        ),
        (
            &[
                "bench",
                "--requests",
                "5",
                "--duration",
                "1s",
                "static:///a:1",
            ][..],
            "cannot be used with",
        ),
        (
            &["watch", "--duration", "soon", "static:///a:1"][..],
            "--duration",
        ),
        (&["frobnicate"][..], "frobnicate"),
    ] {
        let out = meshless().args(args).output().expect("run");
        assert_one_line_error(&out, USAGE, wanted);
    }
}

#[test]
fn a_name_that_does_not_resolve_is_a_discovery_error() {
    let out = meshless()
        .args([
            "resolve",
            "--timeout",
            "30s",
            "static:///no-such-host.invalid:50051",
        ])
        .output()
        .expect("run");
    assert_one_line_error(&out, DISCOVERY, "no-such-host.invalid");
}

#[test]
fn bench_against_unreachable_servers_fails_with_the_connection_error() {
    let target = format!("static:///{},{}", closed_port(), closed_port());
    let out = meshless()
        .args(["bench", "--requests", "10", &target])
        .output()
        .expect("run");
    let line = assert_one_line_error(&out, CALLS, "none of its 2 endpoints");
    assert!(line.contains("connecting to 127.0.0.1:"), "{line}");
    assert!(out.stdout.is_empty(), "no report when nothing was called");
}
