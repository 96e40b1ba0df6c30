#!/usr/bin/env bash
# Benchmarks that print numbers: machine image build, boot to etcd2 healthy, memory;
# fleet on real machines (start to active, fleetd memory and CPU, etcd traffic, failover);
# QEMU machines (boot to etcd2 healthy against a bare boot of the same kernel, the firmware
# path, the image written out as raw and qcow2); updates (payload write throughput against a
# plain write, update_engine's and locksmithd's memory, publish to every machine updated);
# flannel (container-to-container TCP over vxlan against the underlay, time to subnet.env);
# rkt (start to exit of a pod against docker run, a running pod's memory against Docker's);
# scale (10, 50 and 100 machines against as many bare nspawn boots).
# Needs root. Takes a few minutes (the cold image build runs debootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release --locked --workspace
cargo bench --locked -p ferrite --bench machines
cargo bench --locked -p ferrite --bench fleet
cargo bench --locked -p ferrite --bench qemu
cargo bench --locked -p ferrite --bench updates
cargo bench --locked -p ferrite --bench flannel
cargo bench --locked -p ferrite --bench rkt
cargo bench --locked -p ferrite --bench scale
