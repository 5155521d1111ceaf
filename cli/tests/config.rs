//! `meshless check-config`: a valid file is ok; an invalid one lists every problem with its
//! position on stdout and exits 2 with one line on stderr.

mod common;

use common::{assert_one_line_error, json, meshless, stdout};

fn write(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn a_valid_file_is_ok_and_an_invalid_one_lists_every_problem() {
    let (_d, good) = write(
        "good.yaml",
        "clients:\n  cart:\n    target: dns:///cart.prod:50051\n    serviceConfig:\n      loadBalancingConfig: [{round_robin: {}}]\n",
    );
    let out = meshless().arg("check-config").arg(&good).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("ok: 1 client: cart"),
        "{}",
        stdout(&out)
    );

    let (_d, bad) = write(
        "bad.toml",
        "[clients.cart]\ntarget = \"dns:///cart:1\"\nconectTimeout = \"1s\"\nqueueTimeout = \"5\"\n",
    );
    let out = meshless().arg("check-config").arg(&bad).output().unwrap();
    assert_one_line_error(&out, 2, "bad.toml: 2 problems (listed on stdout)");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].ends_with("bad.toml:3:1: clients.cart.conectTimeout: unknown key `conectTimeout`; did you mean `connectTimeout`?"), "{text}");
    assert!(
        lines[1].contains("bad.toml:4:16: clients.cart.queueTimeout:"),
        "{text}"
    );

    let out = meshless()
        .args(["check-config", "--json"])
        .arg(&bad)
        .output()
        .unwrap();
    let v = json(&out);
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"][0]["line"], 3);
    assert_eq!(v["problems"][0]["path"], "clients.cart.conectTimeout");
}
