#!/usr/bin/env bash
# The chapter's walkthrough, as far as Ferrite goes today: validate the book's user-data and
# apply it with coreos-cloudinit into a scratch root, the way a Vagrant-launched CoreOS
# machine would (addresses in /etc/environment), printing the plan and the files it wrote.
#
#   ./scripts/demo.sh [USER-DATA]      (default: examples/user-data, the chapter's file)
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cargo build --release --locked -p coreos-cloudinit
BIN=target/release/coreos-cloudinit
USER_DATA=${1:-examples/user-data}

echo "== coreos-cloudinit -validate -from-file $USER_DATA"
if COREOS_CLOUDINIT_LOG=warn "$BIN" -validate -from-file "$USER_DATA"; then echo "(valid)"; fi

ROOT=$(mktemp -d /tmp/ferrite-root.XXXXXX)
mkdir -p "$ROOT/etc"
printf 'COREOS_PUBLIC_IPV4=172.17.8.101\nCOREOS_PRIVATE_IPV4=172.17.8.101\n' > "$ROOT/etc/environment"

echo
echo "== coreos-cloudinit -from-file $USER_DATA -root $ROOT"
COREOS_CLOUDINIT_LOG=warn "$BIN" -from-file "$USER_DATA" -root "$ROOT"

echo
echo "== files under $ROOT"
(cd "$ROOT" && find . -type f -o -type l | sort | sed 's|^\./|/|')
for f in run/systemd/system/etcd2.service.d/20-cloudinit.conf run/systemd/system/fleet.service.d/20-cloudinit.conf; do
  if [[ -f "$ROOT/$f" ]]; then echo; echo "--- /$f"; cat "$ROOT/$f"; fi
done
