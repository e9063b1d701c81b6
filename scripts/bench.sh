#!/usr/bin/env bash
# Builds the benchmarks once (release, `bench` profile) and runs them, printing
# their numbers; docs/BENCHMARKS.md records the results.
#
#   scripts/bench.sh [--quick] [NAME ...]
#
# NAME is a file stem under benches/ (exec_engine, exec_rate, exec_resume, ...);
# without names every benchmark runs. --quick runs the short smoke versions.
# Full run: about 4 minutes after the build on a 2-core machine (exec_rate alone
# takes 2.5 minutes: 60 s at the limit plus the throttled case).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=()
names=()
for arg in "$@"; do
    case "$arg" in
        --quick) quick=(--quick) ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) names+=("$arg") ;;
    esac
done
if [ ${#names[@]} -eq 0 ]; then
    for file in benches/*.rs; do
        names+=("$(basename "$file" .rs)")
    done
fi

echo "# $(date -u +%F) $(uname -sm), $(nproc) cores, $(git rev-parse --short HEAD 2>/dev/null || echo '?')" >&2
build=()
for name in "${names[@]}"; do
    build+=(--bench "$name")
done
# One release build of every benchmark asked for (and the keyfleet binary they spawn).
cargo bench --no-run "${build[@]}"
for name in "${names[@]}"; do
    echo "## cargo bench --bench $name -- ${quick[*]:-}" >&2
    cargo bench --quiet --bench "$name" -- "${quick[@]}"
done
