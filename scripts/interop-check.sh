#!/usr/bin/env bash
# Optional, not part of CI: checks that the official Tencent Cloud Python SDK (and,
# with WITH_TCCLI=1, tccli) get correct replies from `keyfleet sim`: a RequestId on
# success, an exception carrying the right code on error. Needs python3 and PyPI.
#
#   scripts/interop-check.sh            # SDK only
#   WITH_TCCLI=1 scripts/interop-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-target/interop-venv}
SDK_PACKAGE=${SDK_PACKAGE:-tencentcloud-sdk-python}
work=$(mktemp -d)
sim_pid=
cleanup() {
    if [ -n "$sim_pid" ]; then kill "$sim_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check "$SDK_PACKAGE"
if [ "${WITH_TCCLI:-0}" = 1 ]; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check tccli
fi

cargo build --quiet
target/debug/keyfleet sim --listen 127.0.0.1:0 --fleet samples/fleet.json --seed 1 \
    >"$work/sim.out" 2>"$work/sim.err" &
sim_pid=$!
for _ in $(seq 100); do
    [ -s "$work/sim.out" ] && break
    sleep 0.1
done
[ -s "$work/sim.out" ] || { cat "$work/sim.err"; echo "keyfleet sim did not start" >&2; exit 1; }

read -r SIM_ENDPOINT SIM_SECRET_ID SIM_SECRET_KEY < <("$VENV/bin/python" -c '
import json, sys
line = json.loads(open(sys.argv[1]).readline())
print(line["endpoint"], line["secret_id"], line["secret_key"])
' "$work/sim.out")
export SIM_ENDPOINT SIM_SECRET_ID SIM_SECRET_KEY

"$VENV/bin/python" - <<'PY'
import json, os, urllib.request
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.cvm.v20170312 import cvm_client, models

endpoint = os.environ["SIM_ENDPOINT"]
cred = credential.Credential(os.environ["SIM_SECRET_ID"], os.environ["SIM_SECRET_KEY"])

def client(method="POST", secret=None):
    http = HttpProfile(protocol="http", endpoint=endpoint.removeprefix("http://"), reqMethod=method)
    c = secret or cred
    return cvm_client.CvmClient(c, "ap-guangzhou", ClientProfile(httpProfile=http))

def unbind(instances, keys, method="POST", secret=None):
    req = models.DisassociateInstancesKeyPairsRequest()
    req.InstanceIds, req.KeyIds = instances, keys
    return client(method, secret).DisassociateInstancesKeyPairs(req)

def expect_error(code, fn):
    try:
        fn()
    except TencentCloudSDKException as e:
        assert e.code == code, f"expected {code}, got {e.code}: {e.message}"
        assert e.requestId, "error without RequestId"
        print(f"ok: {code} ({e.requestId})")
        return
    raise AssertionError(f"expected {code}, got success")

r = unbind(["ins-stop0001"], ["skey-leak0001"])
assert r.RequestId
print(f"ok: POST success ({r.RequestId})")
r = unbind(["ins-stop0002"], ["skey-leak0001"], method="GET")
assert r.RequestId
print(f"ok: GET success ({r.RequestId})")
expect_error("UnsupportedOperation.InstanceOsWindows", lambda: unbind(["ins-win00001"], ["skey-leak0001"]))
expect_error("UnsupportedOperation.InstanceStateRunning", lambda: unbind(["ins-run00001"], ["skey-leak0001"]))
expect_error("InvalidInstanceId.Malformed", lambda: unbind(["ins-1122"], ["skey-leak0001"]))
expect_error("AuthFailure.SecretIdNotFound",
             lambda: unbind(["ins-stop0003"], ["skey-leak0001"], secret=credential.Credential("AKIDnobody", "x")))
expect_error("AuthFailure.SignatureFailure",
             lambda: unbind(["ins-stop0003"], ["skey-leak0001"],
                            secret=credential.Credential(os.environ["SIM_SECRET_ID"], "wrong")))

d = models.DescribeInstancesRequest()
d.InstanceIds = ["ins-stop0001"]
r = client().DescribeInstances(d)
assert r.InstanceSet[0].LoginSettings.KeyIds == ["skey-ops00001"], r.to_json_string()
print("ok: DescribeInstances shows the key gone")

state = json.load(urllib.request.urlopen(endpoint + "/_sim/state"))
held = {i["instance_id"]: i["key_ids"] for i in state["instances"]}
assert "skey-leak0001" not in held["ins-stop0002"], held["ins-stop0002"]
print("ok: /_sim/state agrees")
PY

if [ "${WITH_TCCLI:-0}" = 1 ]; then
    export TENCENTCLOUD_SECRET_ID=$SIM_SECRET_ID TENCENTCLOUD_SECRET_KEY=$SIM_SECRET_KEY
    out=$("$VENV/bin/tccli" cvm DisassociateInstancesKeyPairs --region ap-shanghai \
        --endpoint "$SIM_ENDPOINT" --InstanceIds '["ins-stop0003"]' --KeyIds '["skey-ops00001"]')
    echo "$out" | grep -q RequestId || { echo "tccli: no RequestId: $out" >&2; exit 1; }
    echo "ok: tccli success"
    if out=$("$VENV/bin/tccli" cvm DisassociateInstancesKeyPairs --region ap-guangzhou \
        --endpoint "$SIM_ENDPOINT" --InstanceIds '["ins-win00001"]' --KeyIds '["skey-ops00001"]' 2>&1); then
        echo "tccli: expected an error: $out" >&2
        exit 1
    fi
    echo "$out" | grep -q UnsupportedOperation.InstanceOsWindows || { echo "tccli: wrong error: $out" >&2; exit 1; }
    echo "ok: tccli error"
fi
echo "interop check passed"
