#!/usr/bin/env bash
# Planning and reporting benchmark (issues 13 and 25), measured against SQLite itself
# in the same run: for each shape, RUNS runs (default 3) of
#   keyfleet plan FILE.csv            vs  sqlite3 DB ".mode csv" ".import FILE.csv t"
#   keyfleet plan FILE.json / .jsonl  vs  keyfleet plan FILE.csv
#   keyfleet report (1,000,000 items) vs  sqlite3 -csv DB "select * from items"
# each into a fresh database, timed with /usr/bin/time (wall clock, user CPU, peak RSS).
# Prints every time with the load average when it started, the medians and the ratios
# of the medians against the targets (plan <= 2x import, report <= 1x select, JSON and
# JSON Lines <= 1.3x CSV, peak RSS <= 200 MB), wall clock and user CPU both: on a
# shared machine the CPU ratio is the steadier one. Numbers go in docs/BENCHMARKS.md.
#   scripts/bench-plan.sh            # builds the release binary first
#   SKIP_BUILD=1 RUNS=5 scripts/bench-plan.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in sqlite3 /usr/bin/time awk; do
  if ! command -v "$tool" >/dev/null; then
    echo "bench-plan.sh needs $tool: on Debian/Ubuntu, apt-get install -y sqlite3 time gawk" >&2
    exit 2
  fi
done
dir=${BENCH_DIR:-/tmp/keyfleet-bench}
# BIN: another keyfleet binary to measure (e.g. an earlier build kept for comparison).
runs=${RUNS:-3}
mkdir -p "$dir"
if [ -z "${SKIP_BUILD:-}" ]; then cargo build --release --quiet; fi
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/keyfleet}
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $(sqlite3 --version | cut -d' ' -f1,2)"
# The databases' file system: a disk (ext4, xfs...) or memory (tmpfs). A plan writes
# about three times the bytes .import does, so the ratios differ between the two:
# BENCH_DIR=/dev/shm/... measures the CPU alone, as on a machine whose disk is fast.
echo "storage: $dir on $(stat -f -c %T "$dir")"

# Instance and key ids: ins-/skey- + 8 lowercase hex digits (a subset of [0-9a-z]).
# Every row is one pair with its region; the JSON forms hold the same rows.
gen() { # shape -> "instance key" lines
  case $1 in
    wide) awk 'BEGIN { for (i = 0; i < 1000000; i++) printf "%08x 00000001\n", i }' ;;
    square) awk 'BEGIN { for (i = 0; i < 10000; i++) for (k = 0; k < 100; k++) printf "%08x %08x\n", i, k }' ;;
  esac
}
for shape in wide square; do
  [ -s "$dir/$shape.csv" ] || gen $shape | awk 'BEGIN { print "instance_id,key_id,region" }
      { printf "ins-%s,skey-%s,ap-guangzhou\n", $1, $2 }' > "$dir/$shape.csv"
  [ -s "$dir/$shape.jsonl" ] || gen $shape | awk '
      { printf "{\"instance_id\":\"ins-%s\",\"key_id\":\"skey-%s\",\"region\":\"ap-guangzhou\"}\n", $1, $2 }' > "$dir/$shape.jsonl"
  [ -s "$dir/$shape.json" ] || gen $shape | awk 'BEGIN { print "[" }
      { printf "%s{\"instance_id\":\"ins-%s\",\"key_id\":\"skey-%s\",\"region\":\"ap-guangzhou\"}\n", (NR > 1 ? "," : ""), $1, $2 }
      END { print "]" }' > "$dir/$shape.json"
done

fresh() { rm -f "$1" "$1-wal" "$1-shm"; }
# timed NAME CMD...: runs CMD under /usr/bin/time, stdout discarded, and appends
# "NAME seconds kilobytes user-seconds load LOAD" to $dir/times.
timed() {
  local name=$1; shift
  # Flush the previous command's dirty pages first: otherwise a plan's fsyncs wait for
  # the writeback of the database written just before it (250 MB), and whichever
  # command comes second pays for the first.
  sync
  local load
  load=$(cut -d' ' -f1 /proc/loadavg)
  if ! /usr/bin/time -f "%e %M %U" -o "$dir/one.time" "$@" > /dev/null 2> "$dir/one.err"; then
    echo "$name failed:" >&2; cat "$dir/one.err" >&2; exit 1
  fi
  echo "$name $(cat "$dir/one.time") load $load" | tee -a "$dir/times"
}
: > "$dir/times"
for run in $(seq "$runs"); do
  for shape in wide square; do
    # Alternating the tools in every run: both see the same load on a shared machine.
    fresh "$dir/import.db"
    timed "import.$shape" sqlite3 "$dir/import.db" ".mode csv" ".import $dir/$shape.csv t"
    for format in csv json jsonl; do
      fresh "$dir/$shape.$format.db"
      timed "plan.$shape.$format" "$bin" --db "$dir/$shape.$format.db" plan "$dir/$shape.$format"
    done
  done
  timed "select.wide" sqlite3 -csv "$dir/wide.csv.db" "select * from items"
  timed "report.wide" "$bin" --db "$dir/wide.csv.db" report
done

awk -v runs="$runs" '
  { n[$1]++; t[$1, n[$1]] = $2; u[$1, n[$1]] = $4 }
  $1 ~ /^plan\.wide/ && $3 > rss_wide { rss_wide = $3 }
  $1 ~ /^plan\.square/ && $3 > rss_square { rss_square = $3 }
  function median(name, user,   i, j, k, v, m) {
    m = n[name]
    for (i = 1; i <= m; i++) v[i] = user ? u[name, i] : t[name, i]
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] < v[i]) { k = v[i]; v[i] = v[j]; v[j] = k }
    return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
  }
  function row(label, a, b, target,   ma, mb, r, ua, ub) {
    ma = median(a, 0); mb = median(b, 0); r = ma / mb
    ua = median(a, 1); ub = median(b, 1)
    printf "%-36s %6.2f s / %6.2f s = %5.2fx  (target <= %.1fx: %s)  user CPU %5.2f / %5.2f s = %5.2fx\n",
      label, ma, mb, r, target, r <= target ? "MET" : "MISSED", ua, ub, (ub > 0 ? ua / ub : 0)
  }
  END {
    printf "\nmedians of %d runs; largest peak RSS of plan: wide %d MB, square %d MB (target <= 200 MB: %s)\n",
      runs, rss_wide / 1024, rss_square / 1024, rss_wide <= 204800 && rss_square <= 204800 ? "MET" : "MISSED"
    row("plan wide csv / sqlite3 .import", "plan.wide.csv", "import.wide", 2)
    row("plan square csv / sqlite3 .import", "plan.square.csv", "import.square", 2)
    row("plan wide json / plan wide csv", "plan.wide.json", "plan.wide.csv", 1.3)
    row("plan wide jsonl / plan wide csv", "plan.wide.jsonl", "plan.wide.csv", 1.3)
    row("plan square json / plan square csv", "plan.square.json", "plan.square.csv", 1.3)
    row("plan square jsonl / plan square csv", "plan.square.jsonl", "plan.square.csv", 1.3)
    row("report wide / sqlite3 select *", "report.wide", "select.wide", 1)
  }' "$dir/times"
