#!/usr/bin/env bash
# Installs what Ferrite's build and tests need on Debian/Ubuntu, idempotently.
# Run as root (CI does); as another user it uses sudo if it must install anything.
set -euo pipefail

# Debian packages the build and the test suite use.
PACKAGES=(
  gcc            # C parts of crates (ring via ureq's TLS)
  ca-certificates
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v cargo >/dev/null 2>&1; then
  # A machine without rustup's toolchain: Debian's is enough to build.
  missing+=(cargo rustc)
fi

if ((${#missing[@]})); then
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
