//! Malformed targets: each is rejected with an error that names the bad part.

use meshless::{Channel, Target};

#[test]
fn malformed_targets_name_the_bad_part() {
    // (input, substrings the error must contain)
    let cases: &[(&str, &[&str])] = &[
        ("", &["empty target"]),
        ("   ", &["empty target"]),
        (
            "localhost:50051",
            &["unknown scheme `localhost`", "static:///localhost:50051"],
        ),
        ("10.0.0.1:50051", &["no scheme", "static:///10.0.0.1:50051"]),
        (
            "gopher:///x:1",
            &["unknown scheme `gopher`", "static", "ipv4"],
        ),
        ("ipv4:10.0.0.1", &["`10.0.0.1` has no port"]),
        ("ipv4:10.0.0.1:99999", &["port `99999`", "1..=65535"]),
        ("ipv4:10.0.0.1:0", &["port `0`"]),
        ("ipv4:10.0.0.1:http", &["port `http`"]),
        (
            "ipv4:10.0.0.300:80",
            &["`10.0.0.300:80` is not an IPv4 address"],
        ),
        ("ipv4:[::1]:80", &["`[::1]:80` is not an IPv4 address"]),
        ("ipv4:", &["lists no addresses"]),
        ("ipv4:10.0.0.1:80,", &["address #2 is empty"]),
        ("ipv4:10.0.0.1:80,,10.0.0.2:80", &["address #2 is empty"]),
        ("ipv6:[::1]", &["`[::1]` has no port", "`[::1]:PORT`"]),
        ("ipv6:::1:80", &["`::1:80` has no port", "`[::1:80]:PORT`"]),
        ("ipv6:[::zz]:80", &["`[::zz]:80` is not an IPv6 address"]),
        (
            "ipv6:10.0.0.1:80",
            &["`10.0.0.1:80` is not an IPv6 address"],
        ),
        ("static:///", &["lists no addresses"]),
        (
            "static:///bad_host!:80",
            &["`bad_host!` is not a valid host name"],
        ),
        ("static://auth/h:80", &["takes no authority", "`auth`"]),
        ("static:///h:80:90", &["`h:80:90` is not a valid host name"]),
        ("unix:", &["no socket path"]),
        ("unix://relative/path", &["absolute path"]),
        ("unix:///a.sock,/b.sock", &["one socket"]),
        (
            "etcd:///services/greeter",
            &["comma-separated list with no `/`", "etcd:///host:2379"],
        ),
        ("etcd:///127.0.0.1:2379", &["no key"]),
        (
            "consul:///greeter",
            &[
                "no Consul agent address",
                "consul://agent-host:8500/service",
            ],
        ),
        (
            "kubernetes:///Greeter:80",
            &["`Greeter` is not a valid Service name"],
        ),
        ("k8s://ns1/greeter.ns2:80", &["namespace given twice"]),
    ];
    assert!(cases.len() >= 12);
    for (input, expected) in cases {
        let err = match Target::parse(input) {
            Ok(t) => panic!("`{input}` parsed as {t:?}"),
            Err(e) => e.to_string(),
        };
        for want in *expected {
            assert!(
                err.contains(want),
                "`{input}`: error `{err}` lacks `{want}`"
            );
        }
    }
}

#[test]
fn wellformed_targets_parse() {
    for ok in [
        "ipv4:10.0.0.1:50051,10.0.0.2:50051",
        "ipv6:[::1]:50051,[fe80::1]:443",
        "unix:/run/app.sock",
        "unix:///run/app.sock",
        "unix:relative.sock",
        "static:///host1:50051,10.0.0.2:50051",
        "static:///[::1]:50051",
        "STATIC:///h:1",
    ] {
        Target::parse(ok).unwrap_or_else(|e| panic!("`{ok}`: {e}"));
    }
}

#[tokio::test]
async fn builder_reports_target_and_policy_errors() {
    let err = Channel::builder("ipv4:1.2.3.4").build().unwrap_err();
    assert!(err.to_string().contains("has no port"), "{err}");
    let err = Channel::builder("ipv4:1.2.3.4:80")
        .policy("fastest")
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown load-balancing policy `fastest`"),
        "{err}"
    );
}

#[test]
fn building_outside_a_runtime_is_an_error_not_a_panic() {
    let err = Channel::builder("ipv4:1.2.3.4:80").build().unwrap_err();
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
}
