#!/usr/bin/env bash
# Audits keyfleet's dependencies with cargo-deny (deny.toml):
#   - advisories: RustSec vulnerabilities, unmaintained and unsound crates, yanked versions;
#   - bans, licenses, sources: duplicate/wildcard versions, non-permissive licenses,
#     crates from anywhere but the default registry.
#
# The advisory database is a git repository cargo-deny fetches on each run. Where it
# cannot be fetched (no route to its host), this script says so plainly: it then uses
# a copy fetched earlier if there is one (and says how old it is), and otherwise
# reports the advisories as NOT checked. It never passes silently without them.
#
# Exit: 0 clean; 1 findings; 2 cargo-deny missing; 3 advisories not checked (the rest clean).
# Install once: cargo install --locked cargo-deny
set -uo pipefail
cd "$(dirname "$0")/.."

if ! cargo deny --version >/dev/null 2>&1; then
    echo "audit: cargo-deny is not installed; install it with: cargo install --locked cargo-deny" >&2
    exit 2
fi

status=0
echo "audit: bans, licenses, sources (offline)" >&2
cargo deny --locked check bans licenses sources || status=1

echo "audit: advisories" >&2
fetch_log=$(mktemp)
trap 'rm -f "$fetch_log"' EXIT
if timeout 120 cargo deny --locked fetch db >"$fetch_log" 2>&1; then
    cargo deny --locked check --disable-fetch advisories || status=1
else
    echo "audit: the advisory database could not be fetched:" >&2
    sed 's/^/  | /' "$fetch_log" | tail -n 5 >&2
    db_dir="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
    if compgen -G "$db_dir/*/crates" >/dev/null; then
        newest=$(find "$db_dir" -maxdepth 2 -printf '%TY-%Tm-%Td\n' 2>/dev/null | sort | tail -n 1)
        echo "audit: using the copy fetched earlier in $db_dir (last changed ${newest:-at an unknown date}); it may miss new advisories" >&2
        cargo deny --locked check --disable-fetch advisories || status=1
    else
        echo "audit: advisories NOT checked: no copy of the advisory database on this machine" >&2
        [ "$status" -eq 0 ] && status=3
    fi
fi

case $status in
    0) echo "audit: clean" >&2 ;;
    1) echo "audit: FINDINGS (see above)" >&2 ;;
    3) echo "audit: bans, licenses and sources clean; advisories NOT checked" >&2 ;;
esac
exit "$status"
