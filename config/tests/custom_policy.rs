//! A policy registered in code is chosen by name from a config file, as `.policy(name)`
//! chooses it on the builder.

use meshless_balancer::{P2cEwmaConfig, PolicyRegistry};
use meshless_config::{Config, Format};

const FILE: &str = "clients:\n  c:\n    target: static:///127.0.0.1:1\n    serviceConfig: {loadBalancingConfig: [{p2c_kratos: {}}]}\n";

fn registry() -> PolicyRegistry {
    let mut policies = PolicyRegistry::default();
    policies.register("p2c_kratos", P2cEwmaConfig::kratos());
    policies
}

#[tokio::test]
async fn a_policy_registered_in_code_is_chosen_by_name_from_a_file() {
    // Without the registry the name is one gRPC would skip, leaving no policy.
    let err = Config::from_str(FILE, Format::Yaml)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no policy meshless knows"), "{err}");

    let config = Config::from_str_with_policies(FILE, Format::Yaml, &registry()).unwrap();
    assert_eq!(config.policy("c"), Some("p2c_kratos"));
    let channel = config.builder("c").unwrap().build().unwrap();
    assert_eq!(channel.status().policy, "p2c_ewma");

    // The same from a file on disk.
    let dir = std::env::temp_dir().join(format!("meshless-custom-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("clients.yaml");
    std::fs::write(&path, FILE).unwrap();
    let from_file = Config::from_file_with_policies(&path, &registry()).unwrap();
    assert_eq!(from_file.policy("c"), Some("p2c_kratos"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_registered_policy_takes_its_configuration_in_code_not_in_the_file() {
    let text = FILE.replace("{p2c_kratos: {}}", "{p2c_kratos: {decay: 5s}}");
    let err = Config::from_str_with_policies(&text, Format::Yaml, &registry())
        .unwrap_err()
        .to_string();
    assert!(err.contains("registered in code"), "{err}");
    assert!(err.contains("loadBalancingConfig[0].p2c_kratos"), "{err}");
}

#[tokio::test]
async fn built_in_names_keep_their_file_configuration_whatever_is_registered() {
    // A registry that replaces round_robin does not change what `round_robin` means in a
    // file: built-in names are read by the file's own rules.
    let mut policies = PolicyRegistry::default();
    policies.register("round_robin", P2cEwmaConfig::kratos());
    let text = FILE.replace("p2c_kratos", "round_robin");
    let config = Config::from_str_with_policies(&text, Format::Yaml, &policies).unwrap();
    assert_eq!(config.policy("c"), Some("round_robin"));
    let channel = config.builder("c").unwrap().build().unwrap();
    assert_eq!(channel.status().policy, "round_robin");
}
