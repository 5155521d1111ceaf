#!/usr/bin/env bash
# Everything CI checks, in the order it checks it: installs what the tests need when it is
# missing, then the format check, clippy, the tests (doc tests included) and the check that
# the dependency graph holds one tonic, one hyper, one http and one tower.
#
# Usage: scripts/test.sh        (from anywhere; .ci/run calls it)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# A one-off build gains nothing from incremental state, which is the largest part of target/
# (several GB).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

# Debian packages the tests need, as "command:package" (or "/path:package"): the package is
# installed only when the command (or file) is missing: the etcd server and etcdctl for the
# etcd tests, and protoc with its well-known types (google/protobuf/*.proto) for
# etcd-client's build script (behind the `etcd` feature; default builds need no protoc).
APT_PACKAGES=(
    etcd:etcd-server
    etcdctl:etcd-client
    protoc:protobuf-compiler
    /usr/include/google/protobuf/descriptor.proto:libprotobuf-dev
)

# Crates that must appear in exactly one version (docs/architecture.md, "The crates").
SINGLE_VERSION_CRATES=(tonic hyper http tower)

# ===== helpers =====

step() {
    local name=$1
    shift
    echo "==> ${name}"
    local start
    start=$(date +%s)
    "$@"
    echo "<== ${name}: $(($(date +%s) - start)) s"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

# ===== steps =====

install_packages() {
    local missing=() entry
    for entry in ${APT_PACKAGES[@]+"${APT_PACKAGES[@]}"}; do
        local probe=${entry%%:*}
        if [[ $probe == /* ]]; then
            [ -e "$probe" ] || missing+=("${entry#*:}")
        elif ! command -v "$probe" >/dev/null 2>&1; then
            missing+=("${entry#*:}")
        fi
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "all packages present"
        return
    fi
    echo "installing: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

install_components() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo is not installed; install a Rust toolchain first" >&2
        return 1
    fi
    local component
    for component in rustfmt clippy; do
        local probe=fmt
        [ "$component" = clippy ] && probe=clippy
        if ! cargo "$probe" --version >/dev/null 2>&1; then
            echo "adding rustup component ${component}"
            rustup component add "$component"
        fi
    done
    cargo --version
}

fmt_check() {
    cargo fmt --all -- --check
}

clippy() {
    cargo clippy --workspace --all-targets --all-features -- -D warnings
    # Default features too: code gated on a feature must not warn when it is off.
    cargo clippy --workspace --all-targets -- -D warnings
}

# --no-fail-fast: a failing test binary does not hide the failures of the ones after it.
tests() {
    cargo test --workspace --all-features --no-fail-fast
}

# A bounded fuzz pass over the config parser (cargo-fuzz, libFuzzer without a sanitizer,
# which works on the stable toolchain): the repository's corpus seeds it; what the run adds
# goes to a temporary directory, so the tree is not changed.
fuzz_config() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked
    fi
    local grown
    grown=$(mktemp -d)
    cargo fuzz run config_parse -s none "$grown" fuzz/corpus/config_parse -- \
        -max_total_time="${MESHLESS_FUZZ_SECONDS:-30}"
    rm -rf "$grown"
}

# The transport crate alone: in a workspace build other crates turn on tonic's `server`
# feature, which changes how tonic maps transport errors; the channel must map them itself
# (transport/tests/mid_body.rs), so its tests also run where tonic is built without it.
transport_alone() {
    cargo test -p meshless-transport
}

single_versions() {
    local versions failed=0 name
    # Every package version in the graph (normal, build and dev edges), one "name vX" a line.
    versions=$(cargo tree --workspace --all-features -e normal,build,dev \
        --prefix none --format '{p}' | awk '{print $1, $2}' | sort -u)
    for name in "${SINGLE_VERSION_CRATES[@]}"; do
        local found
        found=$(awk -v n="$name" '$1 == n {print $2}' <<<"$versions" | tr '\n' ' ')
        if [ "$(wc -w <<<"$found")" -gt 1 ]; then
            echo "duplicate ${name}: ${found}"
            failed=1
        else
            echo "${name}: ${found:-absent}"
        fi
    done
    if [ "$failed" -ne 0 ]; then
        echo "cargo tree -d shows where the duplicates come from:"
        cargo tree --workspace --all-features -d
        return 1
    fi
}

# What the build left on disk, so a CI machine that runs short can be told from a failing test.
disk_report() {
    df -h . | tail -n 1
    du -sh target fuzz/target 2>/dev/null || true
}

disk_report
step "install packages" install_packages
step "toolchain components" install_components
step "cargo fmt --check" fmt_check
step "cargo clippy -D warnings" clippy
step "cargo test" tests
step "cargo test -p meshless-transport (tonic without server)" transport_alone
step "fuzz the config parser (bounded)" fuzz_config
step "one tonic/hyper/http/tower" single_versions
disk_report
echo "all checks passed"
