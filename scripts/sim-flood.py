#!/usr/bin/env python3
"""Memory of `keyfleet sim` under 30 unsigned ~900 KB POSTs and one journal GET (README, "Abuse").

Usage: scripts/sim-flood.py [path/to/keyfleet]   (default target/debug/keyfleet); loopback only."""
import json, subprocess, sys, socket, http.client, time
binary = sys.argv[1] if len(sys.argv) > 1 else "target/debug/keyfleet"
p = subprocess.Popen([binary, "sim", "--listen", "127.0.0.1:0", "--generate", "10", "--seed", "1"],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"})
line = json.loads(p.stdout.readline())
host, port = line["endpoint"][7:].split(":")
def hwm():
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith(("VmHWM", "VmRSS")): print("  ", l.strip())
print(binary); hwm()
ids = ",".join('"ins-%08x"' % n for n in range(786*1024 // 13))
body = ('{"InstanceIds":[%s],"KeyIds":["skey-0000000a"]}' % ids).encode()
for _ in range(30):
    c = http.client.HTTPConnection(host, int(port)); c.request("POST", "/", body, {"Content-Type": "application/json", "X-TC-Action": "DisassociateInstancesKeyPairs"}); c.getresponse().read(); c.close()
print(" after 30 unsigned %d KB POSTs" % (len(body)//1024)); hwm()
c = http.client.HTTPConnection(host, int(port)); c.request("GET", "/_sim/journal"); n = len(c.getresponse().read()); c.close()
print(" after GET /_sim/journal (%d bytes)" % n); hwm()
p.kill()
