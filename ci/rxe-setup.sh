#!/usr/bin/env bash
# Build (or remove) the two-HCA Soft-RoCE topology on this kernel, as root:
#   rxe0 (local HCA) on veth rxpw0 <== wire ==> rxe1 (peer HCA) on veth rxpw1,
# with policy routing that forces RoCE traffic across the wire, then verify both
# ports are ACTIVE and ibv_rc_pingpong runs rxe0 <-> rxe1.
#
#   ci/rxe-setup.sh                 install what is missing, build, verify (idempotent)
#   ci/rxe-setup.sh --no-install    build and verify only
#   ci/rxe-setup.sh --teardown      remove exactly what this script created
#   ci/rxe-setup.sh --show          print the topology
# Names and addresses: RXE_POWER_LOCAL_DEV/PEER_DEV/LOCAL_NETDEV/PEER_NETDEV/
# LOCAL_ADDR/PEER_ADDR (defaults rxe0 rxe1 rxpw0 rxpw1 198.18.0.1 198.18.0.2).
# The logic lives in harness/topology/ (standard library only); this script
# installs packages and calls it with the system python3.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
action=up install=1
for arg in "$@"; do
  case "$arg" in
    --teardown) action=down install=0 ;;
    --show) action=show install=0 ;;
    --verify) action=verify install=0 ;;
    --no-install) install=0 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "rxe-setup.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" != 0 ]; then
  echo "rxe-setup.sh: error: must run as root (it adds veths, rules and rdma links); fix: sudo $0 $*" >&2
  exit 2
fi

need_pkgs() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  printf '%s\n' "${missing[@]}"
}

if [ "$install" = 1 ] && command -v apt-get >/dev/null; then
  mapfile -t missing < <(need_pkgs rdma-core ibverbs-providers ibverbs-utils rdmacm-utils \
    python3-pyverbs iproute2 perftest kmod)
  if [ "${#missing[@]}" -gt 0 ] && [ -n "${missing[0]}" ]; then
    echo "rxe-setup.sh: installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [ ! -d /sys/module/rdma_rxe ] && ! modprobe -n rdma_rxe 2>/dev/null; then
    rel=$(uname -r)
    if grep -qi ubuntu /etc/os-release 2>/dev/null; then
      echo "rxe-setup.sh: rdma_rxe missing for $rel: installing linux-modules-extra-$rel"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q "linux-modules-extra-$rel" >/dev/null || true
    fi
  fi
fi
cd "$here"
exec env PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" /usr/bin/python3 -P -m harness.topology "$action"
