#!/usr/bin/env bash
# Build the verbs tracer (clients/tracer/rxe_power_trace.c) into
# build/tracer/librxe_power_trace.so with the distribution's gcc and libibverbs headers
# (apt: gcc libibverbs-dev), and build/tracer/trace_hotpath (the tracer's hot paths timed over
# a fake provider). Also builds the C examples in examples/ when they exist.
# Run by ci/bootstrap.sh; safe to re-run (rebuilds when a source is newer).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src="$here/clients/tracer/rxe_power_trace.c"
out="$here/build/tracer"
lib="$out/librxe_power_trace.so"
if ! command -v gcc >/dev/null || [ ! -f /usr/include/infiniband/verbs.h ]; then
  echo "build-tracer.sh: error: gcc or /usr/include/infiniband/verbs.h missing;" \
       "fix: apt-get install gcc libibverbs-dev (ci/bootstrap.sh does)" >&2
  exit 1
fi
mkdir -p "$out"
if [ ! -f "$lib" ] || [ "$src" -nt "$lib" ] || [ "$here/clients/tracer/rxe_power_trace.h" -nt "$lib" ]; then
  gcc -std=gnu11 -O2 -g -Wall -Wextra -Werror -fPIC -shared -fvisibility=default \
      -o "$lib.tmp" "$src" -ldl -libverbs -lpthread
  mv "$lib.tmp" "$lib"
  echo "build-tracer.sh: built $lib"
fi
# the tracer's hot paths timed over a fake provider (harness/run/bench/tracer_overhead.py)
hot="$out/trace_hotpath"
if [ ! -f "$hot" ] || [ "$src" -nt "$hot" ] || [ "$here/clients/tracer/trace_hotpath.c" -nt "$hot" ]; then
  gcc -std=gnu11 -O2 -g -Wall -Wextra -Werror -o "$hot.tmp" \
      "$here/clients/tracer/trace_hotpath.c" -ldl -libverbs -lpthread
  mv "$hot.tmp" "$hot"
  echo "build-tracer.sh: built $hot"
fi
for c in "$here"/examples/*.c; do
  [ -f "$c" ] || continue
  bin="$out/$(basename "$c" .c)"
  if [ ! -f "$bin" ] || [ "$c" -nt "$bin" ] || [ "$here/examples/loopback.h" -nt "$bin" ]; then
    gcc -std=gnu11 -O2 -g -Wall -Wextra -Werror -o "$bin.tmp" "$c" -libverbs
    mv "$bin.tmp" "$bin"
    echo "build-tracer.sh: built $bin"
  fi
done
