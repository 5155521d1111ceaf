//! Helpers shared by the CLI's tests (included with `mod common;`).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;
use meshless_integration::server::ServerHandle;

/// Upper bound on one run of the binary: a run that takes longer has hung.
pub const RUN_BOUND: Duration = Duration::from_secs(60);

/// The `meshless` binary, bounded by [`RUN_BOUND`].
pub fn meshless() -> Command {
    let mut cmd = Command::cargo_bin("meshless").expect("the meshless binary is built");
    cmd.timeout(RUN_BOUND);
    cmd
}

/// Starts `n` loopback servers (they answer grpc.health.v1.Health) named s0..s{n-1}.
pub fn servers(n: usize) -> Vec<ServerHandle> {
    meshless_integration::server::spawn_servers(n)
}

/// A `static:///` target for these addresses.
pub fn static_target(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
    format!("static:///{}", list.join(","))
}

/// A loopback address nothing listens on (bound, then released).
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr")
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stdout parsed as one JSON value.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(out)))
}

/// Asserts that the run failed with `code` and exactly one stderr line that starts with
/// `meshless: ` and contains `wanted`; returns that line.
pub fn assert_one_line_error(out: &Output, code: i32, wanted: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code; stderr: {stderr}; stdout: {}",
        stdout(out)
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one stderr line expected, got: {stderr}");
    let line = lines[0];
    assert!(line.starts_with("meshless: "), "{line}");
    assert!(line.contains(wanted), "`{wanted}` not in: {line}");
    assert!(!line.contains("panicked"), "{line}");
    line.to_owned()
}
