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
# Every step runs even after a failure (every test binary, the doc tests, the TLS build), so
# one failure never hides others; the exit status is the first failure's.
status=0
step() {
  echo "== $(date -u +%H:%M:%S) $*"
  local t0=$SECONDS
  "$@" 2>&1 | tee -a "$log"
  local s=${PIPESTATUS[0]}
  echo "== $* took $((SECONDS - t0)) s"
  if ((s != 0)); then
    echo "!! failed ($s): $*" | tee -a "$log"
    ((status == 0)) && status=$s
  fi
  return 0
}
set +e
step cargo test --workspace --locked --no-fail-fast
# TLS to etcd is a build feature (it costs fleetd memory): its own lints and test.
step cargo clippy -p fleet-store -p fleetd -p fleetctl --all-targets --locked \
  --features fleet-store/tls -- -D warnings
step cargo test -p fleet-store --features tls --test tls --locked --no-fail-fast
set -e
# One closing line for the whole suite (cargo prints one per test binary). A binary that
# failed to build or crashed prints no result line: it counts as one failure.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^!! failed/ { steps++ }
     END { if (f == 0 && steps > 0) f = steps; printf "total: %d passed, %d failed\n", p, f }' "$log"
echo "== the whole suite took $SECONDS s"
exit "$status"
