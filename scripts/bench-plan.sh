#!/usr/bin/env bash
# Planning benchmark: two 1,000,000-row CSVs into fresh databases, timed with
# /usr/bin/time -v (wall clock and peak RSS). Numbers go in docs/BENCHMARKS.md.
#   scripts/bench-plan.sh            # builds the release binary first
#   SKIP_BUILD=1 scripts/bench-plan.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${BENCH_DIR:-/tmp/keyfleet-bench}
mkdir -p "$dir"
if [ -z "${SKIP_BUILD:-}" ]; then cargo build --release --quiet; fi
bin=target/release/keyfleet

# Instance and key ids: ins-/skey- + 8 lowercase hex digits (a subset of [0-9a-z]).
if [ ! -s "$dir/wide.csv" ]; then
  awk 'BEGIN { print "instance_id,key_id,region";
               for (i = 0; i < 1000000; i++) printf "ins-%08x,skey-00000001,ap-guangzhou\n", i }' > "$dir/wide.csv"
fi
if [ ! -s "$dir/square.csv" ]; then
  awk 'BEGIN { print "instance_id,key_id,region";
               for (i = 0; i < 10000; i++) for (k = 0; k < 100; k++)
                 printf "ins-%08x,skey-%08x,ap-guangzhou\n", i, k }' > "$dir/square.csv"
fi

for shape in wide square; do
  rm -f "$dir/$shape.db" "$dir/$shape.db-wal" "$dir/$shape.db-shm"
  echo "== $shape: $(wc -l < "$dir/$shape.csv") lines (header included)"
  /usr/bin/time -v "$bin" --db "$dir/$shape.db" plan "$dir/$shape.csv" 2> "$dir/$shape.time" >/dev/null || {
    cat "$dir/$shape.time"; exit 1; }
  grep -E "Elapsed \(wall|Maximum resident" "$dir/$shape.time"
  grep -E "valid pairs|jobs " "$dir/$shape.time" || true
done
