"""schemathesis hooks for run.sh (SCHEMATHESIS_HOOKS).

Every well-formed `addr` the fuzzer generates for POST /api/v1/members is
pointed at this machine's loopback (127.0.0.1 or localhost), so the node
never dials or resolves an address off the machine; and two times in three
at one of the cluster's own gRPC ports (KEEL_FUZZ_GRPC_PORTS), so that the
fuzzer tries what the issue did: ids at another member's address, removed
nodes added back, members added twice. Malformed addresses are left alone.
"""

import os
import re
import zlib

import schemathesis

PORTS = [int(p) for p in os.environ.get("KEEL_FUZZ_GRPC_PORTS", "").split(",") if p]
HOSTS = ["127.0.0.1", "localhost"]
HOST_PORT = re.compile(r"^\S+:([0-9]{1,5})$")


@schemathesis.hook
def map_case(context, case):
    body = case.body
    if not isinstance(body, dict) or not isinstance(body.get("addr"), str):
        return case
    m = HOST_PORT.match(body["addr"])
    if not m or not 1 <= int(m.group(1)) <= 65535:
        return case
    h = zlib.crc32(body["addr"].encode())
    port = PORTS[h % len(PORTS)] if PORTS and h % 3 else int(m.group(1))
    body["addr"] = f"{HOSTS[h % len(HOSTS)]}:{port}"
    return case
