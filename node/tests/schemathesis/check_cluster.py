"""After the fuzzer: is the `keel dev` cluster on BASE still one cluster?

Asks every node's /api/v1/status. Passes when exactly one node leads, the
leader's membership lists only nodes of this cluster, each at that node's own
gRPC address, and every member names that leader and reports the same
membership. Nodes the fuzzer removed (with force) may run on outside the
membership; they are listed, not judged. Waits up to 60 s for an election or
a membership change to settle; the last line is the verdict.

Usage: check_cluster.py BASE_PORT NODES
"""

import json
import socket
import sys
import time
import urllib.request

SETTLE_S = 60


def status(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/status", timeout=3) as r:
            return json.load(r)
    except Exception as e:  # noqa: BLE001 - any failure means "did not answer"
        return {"unreachable": str(e)}


def sockets(addr):
    """Every socket address host:port resolves to (empty if it does not)."""
    host, _, port = addr.rpartition(":")
    try:
        return {a[4][:2] for a in socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)}
    except (OSError, ValueError):
        return set()


def membership(s):
    return sorted((m["id"], m["addr"], m["voter"]) for m in s.get("members", []))


def verdict(base, nodes):
    """(ok, message) for one look at the cluster."""
    statuses = {i: status(base + 100 + i - 1) for i in range(1, nodes + 1)}
    down = [i for i, s in statuses.items() if "unreachable" in s]
    if down:
        return False, f"nodes {down} do not answer: " + "; ".join(statuses[i]["unreachable"] for i in down)
    by_id = {s["node_id"]: s for s in statuses.values()}
    leaders = [s["node_id"] for s in statuses.values() if s["role"] == "leader"]
    if len(leaders) != 1:
        views = {i: (s["role"], s["leader_id"], membership(s)) for i, s in statuses.items()}
        return False, f"{len(leaders)} leaders {leaders}; each node's (role, leader, membership): {views}"
    leader = by_id[leaders[0]]
    members = membership(leader)
    problems = []
    for mid, addr, _ in members:
        s = by_id.get(mid)
        if s is None:
            problems.append(f"member {mid} at {addr} is none of this cluster's nodes")
            continue
        # Another name for the same address (localhost for 127.0.0.1) is the
        # same node; an address that reaches another socket is not.
        if s["grpc_addr"] != addr and not sockets(s["grpc_addr"]) & sockets(addr):
            problems.append(f"member {mid} is listed at {addr}, but node {mid} serves {s['grpc_addr']}")
        if s["leader_id"] != leader["node_id"]:
            problems.append(f"member {mid} names leader {s['leader_id']}, not {leader['node_id']}")
        if membership(s) != members:
            problems.append(f"member {mid} reports membership {membership(s)}, the leader {members}")
    if problems:
        return False, "; ".join(problems)
    removed = sorted(set(by_id) - {m[0] for m in members})
    voters = [m[0] for m in members if m[2]]
    learners = [m[0] for m in members if not m[2]]
    return True, (
        f"OK: leader node {leader['node_id']}, voters {voters}, learners {learners}, "
        f"agreed by every member; removed and still running: {removed}"
    )


def main():
    base, nodes = int(sys.argv[1]), int(sys.argv[2])
    deadline = time.monotonic() + SETTLE_S
    while True:
        ok, message = verdict(base, nodes)
        if ok or time.monotonic() > deadline:
            break
        time.sleep(1)
    print(message if ok else f"BROKEN after {SETTLE_S} s: {message}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
