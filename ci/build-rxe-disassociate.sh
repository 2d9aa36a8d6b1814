#!/usr/bin/env bash
# Build rdma_rxe.ko with disassociate_ucontext (rxe-power's --removal disassociate) for
# one kernel version, from that kernel's own Debian source and headers; cached.
#
#   ci/build-rxe-disassociate.sh [--variant full|pm|empty-callback] [VERSION|guest|native]
#
# VERSION: a kernel release such as 6.1.0-56-amd64. `guest` (the default): the kernel
# the VM runner boots (the newest /boot/vmlinuz-<ver> whose /lib/modules/<ver> has
# rdma_rxe, or RXE_POWER_VM_KERNEL=.../vmlinuz-<ver>), NOT this host's `uname -r`.
# `native`: the running kernel.
# The change itself (and why an empty callback is not enough for rxe's mmap'd rings) is
# in ci/rxe_disassociate_patch.py. `empty-callback` builds only the empty callback, to
# measure what goes wrong without the rest; nothing uses it by default. `pm` is `full`
# plus the mlx5 order of a system sleep (a platform device whose suspend unregisters the
# rxe ib_devices named in its parameter pm_unregister and whose resume adds them again:
# PM_CODE in the patch script), and it also
# builds rxe_power_fs_keep.ko (ci/guest-pm/: keeps the test guest's virtio-fs/9p transports
# out of system sleep, which they cannot survive); the fault model `mlx5-order` uses both.
# `pm` is the default and what --removal disassociate loads (its sleep callbacks do nothing
# until a transition arms them); `full` is kept (cached where it always was) to compare.
#
# Output: the module's path on stdout (last line); progress on stderr.
# Cache: /var/lib/rxe-power/rxe-disassociate/<version>/pm/rdma_rxe.ko and
# rxe_power_fs_keep.ko (not /var/cache: the virtme-ng guest mounts a tmpfs over /var/cache,
# and the guest must see the module) (full: <version>/rdma_rxe.ko; empty-callback:
# <version>/empty-callback/rdma_rxe.ko), root-owned and not group/world-writable, with a
# stamp of the source package version and of the patch; a second call is instant.
# Needs root to install packages and write the cache (a cache hit needs neither).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_ROOT=/var/lib/rxe-power/rxe-disassociate
BUILD_TIMEOUT_S=600
APT_TIMEOUT_S=900
variant=pm  # what --removal disassociate loads (harness/system/rxe_module.py OURS_VARIANT)
target=guest
die() { echo "build-rxe-disassociate: error: $1" >&2; echo "  fix: $2" >&2; exit 1; }
say() { echo "build-rxe-disassociate: $*" >&2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) [ $# -ge 2 ] || die "--variant needs a value" "--variant full|pm|empty-callback"
               variant=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) die "unknown option $1" "see $0 --help" ;;
    *) target=$1; shift ;;
  esac
done
case "$variant" in full|pm|empty-callback) ;; *)
  die "--variant $variant is not full, pm or empty-callback" "pass --variant pm" ;; esac

guest_version() {
  local img ver best=""
  if [ -n "${RXE_POWER_VM_KERNEL:-}" ]; then
    img=$(basename -- "$RXE_POWER_VM_KERNEL")
    [[ "$img" == vmlinuz-* ]] || die "RXE_POWER_VM_KERNEL=$RXE_POWER_VM_KERNEL is not named vmlinuz-<version>" \
      "point it at /boot/vmlinuz-<version> or pass the version as an argument"
    echo "${img#vmlinuz-}"; return
  fi
  # the same rule as harness/vm.py find_guest_kernel: the newest image that ships rdma_rxe
  for ver in $(ls /boot 2>/dev/null | sed -n 's/^vmlinuz-//p' | sort -V); do
    if find "/lib/modules/$ver/kernel/drivers/infiniband/sw/rxe" -name 'rdma_rxe.ko*' \
         2>/dev/null | grep -q .; then best=$ver; fi
  done
  [ -n "$best" ] || die "no /boot/vmlinuz-<version> with rdma_rxe in /lib/modules/<version>" \
    "apt-get install linux-image-amd64 (ci/bootstrap.sh does), or pass a VERSION"
  echo "$best"
}

case "$target" in
  guest) version=$(guest_version) ;;
  native) version=$(uname -r) ;;
  *) version=$target ;;
esac
[[ "$version" =~ ^[0-9][A-Za-z0-9._+~-]*$ ]] || die "kernel version '$version' has unexpected characters" \
  "pass a release such as 6.1.0-56-amd64"

out_dir="$CACHE_ROOT/$version"
[ "$variant" = full ] || out_dir="$out_dir/$variant"
ko="$out_dir/rdma_rxe.ko"
stamp="$out_dir/stamp"
# the contents of the change and of this script (not their paths: every clone of the tree
# must stamp the same build alike; the stamp is the module's `patch` in a run's provenance)
keep_src="$here/ci/guest-pm/rxe_power_fs_keep.c"
keep_ko="$out_dir/rxe_power_fs_keep.ko"
sources=("$here/ci/rxe_disassociate_patch.py" "$0")
[ "$variant" != pm ] || sources+=("$keep_src")
patch_sum=$(cat -- "${sources[@]}" | sha256sum | cut -c1-16)

# A path root runs code from must be root's alone: owned by root, not group/world-writable.
safe_path() {
  local p=$1 st
  while :; do
    st=$(stat -c '%u %a' -- "$p" 2>/dev/null) || return 1
    [ "${st%% *}" = 0 ] || return 1
    (( (8#${st##* } & 8#022) == 0 )) || return 1
    [ "$p" = / ] && return 0
    p=$(dirname -- "$p")
  done
}

image_pkg_version() {
  dpkg-query -W -f='${Version}' "linux-image-$version" 2>/dev/null \
    || dpkg-query -W -f='${Version}' "linux-image-$version-unsigned" 2>/dev/null || true
}

cache_hit() {
  [ -f "$ko" ] && [ -f "$stamp" ] || return 1
  if ! safe_path "$ko" || ! safe_path "$stamp"; then
    die "the cached $ko (or a folder above it) is not root-owned or is group/world-writable" \
      "remove $out_dir as root and run this again"
  fi
  [ "$(cat "$stamp")" = "$(image_pkg_version) $patch_sum" ] || return 1
  if [ "$variant" = pm ]; then
    [ -f "$keep_ko" ] || return 1
    safe_path "$keep_ko" || die "the cached $keep_ko is not root-owned or is group/world-writable" \
      "remove $out_dir as root and run this again"
  fi
  [ "$(modinfo -F vermagic "$ko" 2>/dev/null | cut -d' ' -f1)" = "$version" ]
}

if cache_hit; then
  say "cached: $ko ($version, $variant)"
  echo "$ko"; exit 0
fi
[ "$(id -u)" = 0 ] || die "no cached module for $version and not root (apt-get, $CACHE_ROOT)" \
  "run as root: sudo $0 $version"

pkgver=$(image_pkg_version)
[ -n "$pkgver" ] || die "linux-image-$version is not installed, so its Debian source version is unknown" \
  "apt-get install linux-image-$version (or pass the version of an installed kernel)"
series=$(echo "$version" | sed -n 's/^\([0-9]\+\.[0-9]\+\).*/\1/p')
src_pkg="linux-source-$series"
hdr_pkg="linux-headers-$version"
tarball="/usr/src/$src_pkg.tar.xz"
need=()
[ "$(dpkg-query -W -f='${Version}' "$src_pkg" 2>/dev/null || true)" = "$pkgver" ] || need+=("$src_pkg=$pkgver")
[ "$(dpkg-query -W -f='${Version}' "$hdr_pkg" 2>/dev/null || true)" = "$pkgver" ] || need+=("$hdr_pkg=$pkgver")
for p in make xz-utils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
work=$(mktemp -d /tmp/rxe-power-build.XXXXXX)  # private: root writes here
trap 'rm -rf -- "$work"' EXIT
if [ "${#need[@]}" -gt 0 ]; then
  say "apt-get install ${need[*]}"
  if ! timeout "$APT_TIMEOUT_S" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
       --no-install-recommends "${need[@]}" >"$work/apt.log" 2>&1; then
    tail -15 "$work/apt.log" >&2
    die "cannot install ${need[*]} (the kernel's own source and headers, version $pkgver)" \
      "apt-get update; check that a Debian mirror (and debian-security for point releases) carrying $src_pkg=$pkgver and $hdr_pkg is in sources.list; or boot a kernel whose source your mirror has; or use --removal block"
  fi
fi
[ -f "$tarball" ] || die "$tarball missing after installing $src_pkg" "apt-get install --reinstall $src_pkg=$pkgver"
[ -d "/usr/src/$hdr_pkg" ] || die "/usr/src/$hdr_pkg missing" "apt-get install --reinstall $hdr_pkg=$pkgver"

say "extracting drivers/infiniband/sw/rxe from $tarball"
tar -xJf "$tarball" -C "$work" "$src_pkg/drivers/infiniband/sw/rxe" \
  || die "cannot extract drivers/infiniband/sw/rxe from $tarball" "apt-get install --reinstall $src_pkg=$pkgver"
rxe_dir="$work/$src_pkg/drivers/infiniband/sw/rxe"
/usr/bin/python3 -P "$here/ci/rxe_disassociate_patch.py" --variant "$variant" "$rxe_dir"
say "building rdma_rxe.ko against /usr/src/$hdr_pkg (at most ${BUILD_TIMEOUT_S}s)"
if ! timeout "$BUILD_TIMEOUT_S" make -C "/usr/src/$hdr_pkg" M="$rxe_dir" CONFIG_RDMA_RXE=m \
     -j"$(nproc)" modules >"$work/build.log" 2>&1; then
  tail -30 "$work/build.log" >&2
  die "the module build failed (log above)" "install gcc and make (ci/bootstrap.sh does), check that $hdr_pkg matches $src_pkg ($pkgver)"
fi
if [ "$variant" = pm ]; then
  keep_dir="$work/fs-keep"
  mkdir -p "$keep_dir" && cp -- "$keep_src" "$keep_dir/" && echo 'obj-m := rxe_power_fs_keep.o' >"$keep_dir/Kbuild"
  say "building rxe_power_fs_keep.ko"
  if ! timeout "$BUILD_TIMEOUT_S" make -C "/usr/src/$hdr_pkg" M="$keep_dir" modules >"$work/keep.log" 2>&1; then
    tail -30 "$work/keep.log" >&2
    die "the rxe_power_fs_keep build failed (log above)" "install gcc and make (ci/bootstrap.sh does)"
  fi
fi
built="$rxe_dir/rdma_rxe.ko"
magic=$(modinfo -F vermagic "$built" | cut -d' ' -f1)
[ "$magic" = "$version" ] || die "the built module's vermagic is '$magic', not '$version'" \
  "install $hdr_pkg=$pkgver (the headers of exactly this kernel)"
install -d -o root -g root -m 0755 "$CACHE_ROOT" "$CACHE_ROOT/$version" "$out_dir"
install -o root -g root -m 0644 "$built" "$ko.tmp"
strip --strip-debug "$ko.tmp"  # 10 MB of debug info otherwise, read at every load
mv -f -- "$ko.tmp" "$ko"
if [ "$variant" = pm ]; then
  install -o root -g root -m 0644 "$keep_dir/rxe_power_fs_keep.ko" "$keep_ko.tmp"
  strip --strip-debug "$keep_ko.tmp"
  mv -f -- "$keep_ko.tmp" "$keep_ko"
fi
echo "$pkgver $patch_sum" >"$stamp.tmp" && chmod 0644 "$stamp.tmp" && mv -f -- "$stamp.tmp" "$stamp"
say "built $ko ($version, source $src_pkg $pkgver, variant $variant)"
echo "$ko"
