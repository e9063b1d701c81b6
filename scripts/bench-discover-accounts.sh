#!/usr/bin/env bash
# discover over several accounts (issue 23): one process over every account of the
# accounts file (--accounts, no --account: the accounts walked at once, each paced at
# its own 10/s) against the same three discoveries one after the other (--account NAME,
# what a responder did before). Each account holds INSTANCES instances (default 3000)
# in ap-guangzhou, all with that account's own id of the leaked key, so each walk is
# INSTANCES/100 DescribeInstances pages plus the key pair, region and template
# listings. Prints both wall times, their ratio, and checks the rows are the same.
#   scripts/bench-discover-accounts.sh                  # the debug binary
#   INSTANCES=6000 BIN=target/release/keyfleet scripts/bench-discover-accounts.sh
set -euo pipefail
cd "$(dirname "$0")/.."
n=${INSTANCES:-3000}
bin=${BIN:-${CARGO_TARGET_DIR:-target}/debug/keyfleet}
dir=$(mktemp -d)
sim_pid=
cleanup() {
  if [ -n "$sim_pid" ]; then kill "$sim_pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $n instances per account"

fleet() { # INDEX -> a fleet whose instances all hold skey-0000000INDEX
  python3 - "$1" "$n" <<'PY'
import json, sys
index, n = int(sys.argv[1]), int(sys.argv[2])
print(json.dumps({"instances": [
    {"instance_id": "ins-%x%07x" % (index, i), "region": "ap-guangzhou", "os": "linux",
     "state": "STOPPED", "key_ids": ["skey-0000000%d" % index, "skey-1000000%d" % index]}
    for i in range(n)]}))
PY
}
for i in 1 2 3; do fleet $i > "$dir/fleet$i.json"; done
"$bin" sim --db "$dir/sim.db" --listen 127.0.0.1:0 --seed 1 --fleet "$dir/fleet1.json" \
  --add-account "prod=200000000002:$dir/fleet2.json" \
  --add-account "dev=200000000003:$dir/fleet3.json" > "$dir/sim.out" 2>/dev/null &
sim_pid=$!
for _ in $(seq 100); do [ -s "$dir/sim.out" ] && break; sleep 0.1; done
field() { python3 -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())[sys.argv[2]])' "$dir/sim.out" "$1"; }
endpoint=$(field endpoint)
export TENCENTCLOUD_SECRET_ID KEYFLEET_ACCOUNTS="$dir/accounts.toml"
TENCENTCLOUD_SECRET_ID=$(field secret_id)
TENCENTCLOUD_SECRET_KEY=$(field secret_key) && export TENCENTCLOUD_SECRET_KEY
cat > "$dir/accounts.toml" <<TOML
[accounts.main]
[accounts.prod]
role_arn = "qcs::cam::uin/200000000002:roleName/KeyRotation"
[accounts.dev]
role_arn = "qcs::cam::uin/200000000003:roleName/KeyRotation"
TOML
kf() { "$bin" --db "$dir/keyfleet.db" --endpoint "$endpoint" "$@"; }
now() { date +%s.%N; }

start=$(now)
kf discover --key main:skey-00000001 --key prod:skey-00000002 --key dev:skey-00000003 \
  --regions ap-guangzhou -o "$dir/together.csv" 2>/dev/null
together=$(echo "$(now) - $start" | bc)
start=$(now)
for account in main prod dev; do
  case $account in main) k=1 ;; prod) k=2 ;; dev) k=3 ;; esac
  kf --account $account discover --key skey-0000000$k --regions ap-guangzhou \
    -o "$dir/$account.csv" 2>/dev/null
done
apart=$(echo "$(now) - $start" | bc)

rows_together=$(tail -n +2 "$dir/together.csv" | cut -d, -f1-6 | sort | md5sum)
rows_apart=$(for a in main prod dev; do tail -n +2 "$dir/$a.csv"; done | sort | md5sum)
[ "$rows_together" = "$rows_apart" ] || { echo "the rows differ" >&2; exit 1; }
printf 'one process, 3 accounts at once: %.2f s; one account after another: %.2f s; ratio %.2f (%d rows each way)\n' \
  "$together" "$apart" "$(echo "$apart / $together" | bc -l)" "$(($(wc -l < "$dir/together.csv") - 1))"
