#!/bin/sh
# In the guest, before its command: unpack the host's Python trees into guest memory and
# bind each over its own path (harness/vm/python_copy.py says why and what is in them).
# Whatever fails, what was bound is undone, the command runs on the shared tree (the same
# files, slower) and one line says why.
#
#   guest_python_copy.sh TIMEOUT_S ROOT [-a ARCHIVE]... [-t TREE]... -- COMMAND [ARG]...
#
# TIMEOUT_S bounds each archive's unpacking (GUEST_UNPACK_TIMEOUT_S); ROOT is the tmpfs.
set -u
set -f  # a path is a path: no globbing of the lists below
nl='
'
timeout_s=$1
root=$2
shift 2
archives=''
trees=''
while [ $# -gt 0 ]; do
  case $1 in
    -a) archives="$archives$2$nl"; shift 2 ;;
    -t) trees="$trees$2$nl"; shift 2 ;;
    --) shift; break ;;
    *) echo "guest_python_copy.sh: unknown argument '$1'; fix: see the usage line" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "guest_python_copy.sh: no command after --" >&2; exit 2; }

bound=''
why=''
copy() {
  mkdir -p "$root" && mount -t tmpfs -o mode=0755 rxe-power-python "$root" \
    || { why="mounting a tmpfs at $root failed"; return 1; }
  bound="$root$nl"
  IFS=$nl
  for a in $archives; do
    if ! timeout "$timeout_s" tar --zstd -x -f "$a" -C "$root"; then
      why="unpacking $a failed or ran over GUEST_UNPACK_TIMEOUT_S=$timeout_s s"
      return 1
    fi
  done
  for t in $trees; do
    if [ ! -e "$root$t" ]; then why="$t is not in the archives"; return 1; fi
    mount --bind "$root$t" "$t" || { why="binding $root$t over $t failed"; return 1; }
    bound="$t$nl$bound"
  done
}
undo() {
  IFS=$nl
  for t in $bound; do umount "$t" 2>/dev/null || umount -l "$t"; done
}

start=$(date +%s%N)
if copy; then
  n=$(printf '%s' "$trees" | grep -c .)
  echo "rxe-power guest: $n Python trees copied into guest memory in" \
       "$(( ($(date +%s%N) - start) / 1000000 )) ms" >&2
else
  undo
  echo "rxe-power guest: the Python trees are read from the shared folder (slower):" \
       "$why" >&2
fi
unset IFS
exec "$@"
