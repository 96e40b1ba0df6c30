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
cargo test --workspace --locked
