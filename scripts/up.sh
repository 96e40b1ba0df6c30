#!/usr/bin/env bash
# The chapter's walkthrough on Ferrite: build the image (once, cached), boot core-01 from the
# chapter's user-data, and run the chapter's checks inside it. Needs root.
#
#   ./scripts/up.sh [ferrite up options...]      e.g. --instances 3 --user-data FILE
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cargo build --release --locked --workspace
FERRITE=target/release/ferrite

args=("$@")
[[ " $* " == *" --user-data"* ]] || args=(--user-data examples/user-data "${args[@]}")
echo "== ferrite up ${args[*]}"
"$FERRITE" up "${args[@]}"
"$FERRITE" status
echo
echo "== ferrite ssh core-01 -- systemctl status etcd2"
"$FERRITE" ssh core-01 -- systemctl status etcd2 --no-pager --lines=0 || true
echo
echo "== ferrite ssh core-01 -- docker version"
"$FERRITE" ssh core-01 -- docker version || true
echo
echo "Log in with: $FERRITE ssh core-01      Remove with: $FERRITE destroy"
