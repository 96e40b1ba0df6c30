#!/usr/bin/env bash
# Installs what Ferrite's build, tests and `ferrite up` need on Debian/Ubuntu, idempotently.
# Run as root (CI does); as another user it uses sudo if it must install anything.
set -euo pipefail

PACKAGES=(
  gcc binutils          # C parts of crates; strip for image binaries
  ca-certificates
  openssl               # certificates for the etcd-over-TLS test
  debootstrap           # the image's Debian /usr
  systemd-container     # systemd-nspawn: the machine driver
  e2fsprogs             # mkfs.ext4 -d for USR, OEM and ROOT
  iproute2              # network namespaces, bridges, veth
  util-linux mount      # losetup/mount, nsenter, runuser, setsid
  etcd-server           # the cluster's etcd discovery service (etcd's v2 discovery protocol)
  etcd-client           # etcdctl, to create discovery tokens
  busybox-static        # a tiny image for `docker import` in tests (no registry is reachable)
  bsdutils              # script(1), a terminal for the login-shell test
  openssh-client        # ssh-keygen: each cluster's SSH key pair
  protobuf-compiler libprotobuf-dev   # etcd-client's build (etcd v3 protocol)
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
  # Debian starts an etcd on the host when systemd runs it; Ferrite only wants the binary.
  if [[ " ${missing[*]} " == *" etcd-server "* && -d /run/systemd/system ]]; then
    $SUDO systemctl disable --now etcd.service >/dev/null 2>&1 || true
  fi
fi
