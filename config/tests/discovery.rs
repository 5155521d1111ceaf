//! `discovery:` blocks become the targets they stand for; etcd's takes go-zero's `EtcdConf`
//! names, so a go-zero `RpcClientConf.Etcd` block pastes in.

use meshless_config::{Config, Format};

fn target_of(block: &str) -> Result<String, String> {
    let text = format!(
        "clients:\n  c:\n    discovery:\n{}",
        block
            .lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    );
    match Config::from_str(&text, Format::Yaml) {
        Ok(c) => Ok(c.target("c").unwrap().to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn each_backend_gives_its_target() {
    let etcd = "etcd:\n  Hosts: [etcd-0:2379, etcd-1:2379]\n  Key: user.rpc\n  User: root\n  Pass: s&cret\n  CACertFile: /etc/ca.pem";
    assert_eq!(
        target_of(etcd).unwrap(),
        "etcd:///etcd-0:2379,etcd-1:2379?key=user%2Erpc&user=root&password=s%26cret&ca-file=%2Fetc%2Fca%2Epem"
    );
    assert_eq!(
        target_of("kubernetes: {service: cart, namespace: prod, port: grpc}").unwrap(),
        "kubernetes:///cart.prod:grpc"
    );
    assert_eq!(
        target_of("dns: {host: cart.prod, port: 50051}").unwrap(),
        "dns:///cart.prod:50051"
    );
    assert_eq!(
        target_of("dns: {host: _grpc._tcp.cart.prod, srv: true, server: 10.0.0.53}").unwrap(),
        "dns+srv://10.0.0.53/_grpc._tcp.cart.prod"
    );
    assert_eq!(
        target_of("consul: {address: consul:8500, service: orders, tags: [grpc], format: kratos}")
            .unwrap(),
        "consul://consul:8500/orders?tag=grpc&format=kratos"
    );
    assert_eq!(
        target_of("static: [10.0.0.1:50051, 10.0.0.2:50051]").unwrap(),
        "static:///10.0.0.1:50051,10.0.0.2:50051"
    );
}

#[test]
fn bad_blocks_are_errors() {
    for (block, want) in [
        (
            "etcd: {Hosts: [a:1], Key: k}\nstatic: [b:2]",
            "give exactly one backend",
        ),
        ("etcd: {Key: k}", "etcd needs Hosts"),
        (
            "etcd: {Hosts: [a:1], Key: k, ID: 7}",
            "ID selects one instance",
        ),
        (
            "etcd: {Hosts: [a:1], key: k}",
            "unknown key `key`; did you mean `Key`?",
        ),
        ("kubernetes: {service: cart}", "needs `port`"),
        ("dns: {host: x, srv: true, port: 1}", "drop `port`"),
        ("static: []", "needs at least one host:port"),
        ("zookeeper: {}", "unknown key `zookeeper`"),
    ] {
        let err = target_of(block).unwrap_err();
        assert!(err.contains(want), "{block}: {err}");
    }
    let both = "clients:\n  c:\n    target: dns:///x:1\n    discovery: {static: [a:1]}\n";
    let err = Config::from_str(both, Format::Yaml)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("give `target` or `discovery`, not both"),
        "{err}"
    );
}
