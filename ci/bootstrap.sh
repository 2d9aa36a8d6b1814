#!/usr/bin/env bash
# One-time install for a fresh Debian/Ubuntu machine, as root:
#   - the RDMA userspace (rdma-core, the rxe provider, pyverbs, perftest, iproute2);
#   - gcc and libibverbs-dev, for the verbs tracer (ci/build-tracer.sh, run below);
#   - when the running kernel has no rdma_rxe: what the VM fallback needs
#     (qemu-system-x86, a distribution kernel that ships rdma_rxe, busybox-static);
#   - .venv/ made from /usr/bin/python3 with --system-site-packages (so it imports
#     the distribution's pyverbs, matched to its libibverbs), with rxe-power and its
#     test extra installed in editable mode.
# Idempotent: installs only what is missing.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$(id -u)" != 0 ]; then
  echo "bootstrap.sh: error: must run as root (apt-get); fix: sudo $0" >&2
  exit 2
fi
pkgs=(zstd rdma-core ibverbs-providers ibverbs-utils rdmacm-utils python3-pyverbs iproute2
      perftest kmod python3-venv python3-pip gcc libibverbs-dev  # gcc, headers: the tracer
      nvme-cli fio  # kernel clients: nvme-rdma host tools, I/O benchmark
      nfs-kernel-server nfs-common)  # NFS over RDMA: rpc.mountd; mount.nfs
# Python 3.11 or newer: the system python3 (the one python3-pyverbs is built for) makes .venv
if ! /usr/bin/python3 -P -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "bootstrap.sh: error: /usr/bin/python3 is $(/usr/bin/python3 -V 2>&1), rxe-power needs 3.11+" \
       "(Debian 12, Ubuntu 24.04); fix: use a supported distribution (Ubuntu 22.04 has 3.10)" >&2
  exit 2
fi
rel=$(uname -r)
removal_kernel=guest  # the kernel our disassociate rdma_rxe is built for (--removal)
if [ -d /sys/module/rdma_rxe ] || modprobe -n rdma_rxe 2>/dev/null; then
  echo "bootstrap.sh: the running kernel $rel has rdma_rxe: native mode"
  removal_kernel=native
else
  echo "bootstrap.sh: the running kernel $rel has no rdma_rxe: installing the VM fallback"
  if grep -qi ubuntu /etc/os-release 2>/dev/null; then
    pkgs+=(qemu-system-x86 linux-image-generic busybox-static)
  else
    pkgs+=(qemu-system-x86 linux-image-amd64 busybox-static)
  fi
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap.sh: apt-get install ${missing[*]}"
  apt-get update -q >/dev/null
  # the log is a fresh private file (mktemp): a fixed name in /tmp could be a planted symlink
  log=$(mktemp /tmp/rxe-power-apt.XXXXXX)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    >"$log" 2>&1 || { tail -30 "$log" >&2; exit 1; }
  rm -f "$log"
fi
# --removal disassociate: rdma_rxe.ko with disassociate_ucontext, built from the kernel's own
# source and headers (it installs linux-source-X.Y and linux-headers-<version>, make, xz);
# cached per kernel version. Without it the harness runs --removal block.
if ! "$here/ci/build-rxe-disassociate.sh" "$removal_kernel" >/dev/null; then
  echo "bootstrap.sh: warning: no disassociate rdma_rxe for the $removal_kernel kernel (above);" \
       "--removal disassociate is unavailable, --removal block works" >&2
fi
cd "$here"
bash ci/build-tracer.sh
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -P -m venv --system-site-packages .venv
fi
.venv/bin/python -P -m pip install -q --disable-pip-version-check -e ".[test]"
.venv/bin/python -P -c "import pyverbs, harness.cli" || {
  echo "bootstrap.sh: error: .venv cannot import pyverbs; fix: apt-get install python3-pyverbs" >&2
  exit 1; }
echo "bootstrap.sh: ready: .venv/bin/rxe-power"
