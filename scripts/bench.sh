#!/usr/bin/env bash
# Builds once (release, `bench` profile) and runs the benchmarks, printing their
# numbers; docs/BENCHMARKS.md records the results.
#
#   scripts/bench.sh [--quick] [NAME ...]
#
# NAME is `plan` (scripts/bench-plan.sh: planning 1,000,000 rows in both shapes)
# or a file stem under benches/ (exec_engine, exec_rate, exec_resume); without
# names everything runs. --quick runs the executor benchmarks' short versions
# (planning has none). Full run: about 5 minutes after the build on 2 cores
# (exec_rate alone takes 2.5 minutes: 60 s at the limit, then the throttled case).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=()
names=()
for arg in "$@"; do
    case "$arg" in
        --quick) quick=(--quick) ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) names+=("$arg") ;;
    esac
done
if [ ${#names[@]} -eq 0 ]; then
    names=(plan)
    for file in benches/*.rs; do
        names+=("$(basename "$file" .rs)")
    done
fi

echo "# $(date -u +%F) $(uname -sm), $(nproc) cores, $(git rev-parse --short HEAD 2>/dev/null || echo '?')" >&2
build=()
for name in "${names[@]}"; do
    [ "$name" = plan ] || build+=(--bench "$name")
done
# One release build: the benchmarks asked for and the keyfleet binary (planning and exec_resume run it).
cargo build --release --bin keyfleet
if [ ${#build[@]} -gt 0 ]; then
    cargo bench --no-run "${build[@]}"
fi
for name in "${names[@]}"; do
    if [ "$name" = plan ]; then
        echo "## scripts/bench-plan.sh" >&2
        SKIP_BUILD=1 scripts/bench-plan.sh
    else
        echo "## cargo bench --bench $name -- ${quick[*]:-}" >&2
        cargo bench --quiet --bench "$name" -- "${quick[@]}"
    fi
done
