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
  ovmf                  # UEFI firmware: the disk boots through its own EFI-SYSTEM in tests
  dbus-daemon           # a private system bus for update_engine's tests
  chromium              # a real headless browser for the update dashboard's test
  iptables              # flanneld's masquerade rules, tested in network namespaces
  iputils-ping          # ping across the overlay in flannel's namespace test
  iperf3                # the flannel benchmark's throughput (copied into a container image)
  docker-registry       # each cluster's image registry (ferrite-registry:5000)
  curl                  # an HTTP client in network namespaces (rkt port forwarding test)
  gnupg                 # keys and signatures for the rkt signature tests (rkt trust)
  time                  # /usr/bin/time: peak memory of rkt refusing a decompression bomb
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

SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"

# QEMU, for the tests that boot a real kernel, and qemu-img for `ferrite image build
# --format qcow2`. On Debian 12 it comes from bookworm-backports
# (10.x, as qemu-utils may already be; bookworm's own 7.2 would replace that qemu-utils).
if ! command -v qemu-system-x86_64 >/dev/null 2>&1 || ! command -v qemu-img >/dev/null 2>&1; then
  if grep -q '^VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
    src=/etc/apt/sources.list.d/ferrite-bookworm-backports.sources
    if [[ ! -f $src ]]; then
      uri=$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
      printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "${uri:-http://deb.debian.org/debian}" | $SUDO tee "$src" >/dev/null
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      -t bookworm-backports qemu-system-x86 qemu-utils
  else
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends qemu-system-x86 qemu-utils
  fi
fi

# A Debian cloud kernel for those tests, unpacked from its package into the cache (never
# installed on the host: nothing in /boot or /lib/modules changes).
kernel_dir="${FERRITE_CACHE_DIR:-/var/cache/ferrite}/kernel"
if [[ ! -f $kernel_dir/vmlinuz ]]; then
  meta=linux-image-cloud-amd64
  apt-cache show "$meta" >/dev/null 2>&1 || meta=linux-image-virtual   # Ubuntu
  pkg=$(apt-cache depends "$meta" | awk '/Depends: linux-image-/ { print $2; exit }')
  if [[ -z $pkg ]]; then
    $SUDO apt-get update -qq
    pkg=$(apt-cache depends "$meta" | awk '/Depends: linux-image-/ { print $2; exit }')
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>&1 || $SUDO apt-get download -q "$pkg")
  dpkg-deb -x "$tmp"/*.deb "$tmp/x"
  $SUDO mkdir -p "$kernel_dir"
  $SUDO cp "$tmp"/x/boot/vmlinuz-* "$kernel_dir/vmlinuz.tmp"
  echo "$pkg" | $SUDO tee "$kernel_dir/package" >/dev/null
  $SUDO mv "$kernel_dir/vmlinuz.tmp" "$kernel_dir/vmlinuz"
  rm -rf "$tmp"
  trap - EXIT
fi
