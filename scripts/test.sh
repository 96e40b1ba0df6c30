#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test (including real machines, as root).
# What CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build --workspace (coreos-cloudinit goes into the test images)"
cargo build --workspace --locked
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
{
  cargo test --workspace --locked &&
    # TLS to etcd is a build feature (it costs fleetd memory): its own lints and test.
    cargo clippy -p fleet-store -p fleetd -p fleetctl --all-targets --locked \
      --features fleet-store/tls -- -D warnings &&
    cargo test -p fleet-store --features tls --test tls --locked
} 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "total: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
