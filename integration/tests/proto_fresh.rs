//! Checks that the generated code checked in at `proto/greeter.v1.rs` matches
//! `proto/greeter.proto`.
//!
//! The generated file is checked in so that nobody needs `protoc` to build
//! meshless. This test regenerates it in pure Rust (protox parses the proto,
//! tonic-prost-build writes the code) into a temporary directory and compares.
//! Run it with `MESHLESS_REGEN_PROTO=1` to overwrite the checked-in file.

use std::path::{Path, PathBuf};

/// The environment variable that turns the check into a regeneration.
const REGEN_VAR: &str = "MESHLESS_REGEN_PROTO";

fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto")
}

#[test]
fn checked_in_greeter_code_is_fresh() {
    let dir = proto_dir();
    let fds = protox::compile(["greeter.proto"], [&dir]).expect("proto/greeter.proto compiles");

    let out = tempfile::tempdir().expect("temporary directory");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out.path())
        .emit_rerun_if_changed(false)
        .compile_fds(fds)
        .expect("tonic-prost-build generates code");

    let generated = std::fs::read_to_string(out.path().join("greeter.v1.rs"))
        .expect("tonic-prost-build wrote greeter.v1.rs");
    let checked_in_path = dir.join("greeter.v1.rs");

    if std::env::var_os(REGEN_VAR).is_some_and(|v| v == "1") {
        std::fs::write(&checked_in_path, &generated).expect("write proto/greeter.v1.rs");
        return;
    }

    let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "proto/greeter.v1.rs is out of date with proto/greeter.proto (or missing).\n\
         Regenerate it with:\n    \
         {REGEN_VAR}=1 cargo test -p meshless-integration --test proto_fresh\n\
         and commit the result."
    );
}
