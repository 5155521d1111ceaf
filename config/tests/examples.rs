//! The example files in examples/config/ stay valid.

use meshless_config::Config;

#[test]
fn example_files_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config");
    let mut checked = 0;
    for name in ["clients.yaml", "clients.toml", "go-zero.yaml"] {
        let c = Config::from_file(dir.join(name)).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.client_names().count() >= 1, "{name}");
        checked += 1;
    }
    let c = Config::from_file(dir.join("clients.yaml")).unwrap();
    assert_eq!(c.policy("cart"), Some("p2c_ewma"));
    assert!(c.outlier_detection("cart").is_some());
    assert_eq!(c.health_check("cart"), Some("cart.v1.Cart"));
    assert_eq!(c.policy("search"), Some("round_robin"));
    assert_eq!(c.policy("user"), Some("p2c_ewma"), "from the defaults");
    assert_eq!(checked, 3);
}
