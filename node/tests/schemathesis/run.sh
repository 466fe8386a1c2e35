#!/usr/bin/env bash
# Schema-driven fuzzing of the admin HTTP API: schemathesis (pinned below)
# sends what node 1's /api/v1/openapi.json allows, to every operation
# including the membership changes, against a throwaway three-node
# `keel dev` cluster; every answer must be a status the document lists, with
# a body of the listed schema, and never a 5xx. Afterwards the cluster must
# still have one leader that every member names and one membership every
# member reports (check_cluster.py): the fuzzer may remove nodes with force,
# but never leave the cluster wrecked.
#
# Usage: node/tests/schemathesis/run.sh [KEEL_BINARY]   (default target/release/keel)
# Environment: KEEL_SCHEMATHESIS_VENV (default target/schemathesis-venv),
# KEEL_SCHEMATHESIS_SEED (default: random, printed), KEEL_SCHEMATHESIS_EXAMPLES (default 100),
# KEEL_SCHEMATHESIS_REPORTS (a directory to keep the JUnit and HAR reports and the nodes' output in).
# It never skips: a missing binary or a failed install fails the run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
cd "$root"

VERSION=4.32.5
keel="${1:-target/release/keel}"
venv="${KEEL_SCHEMATHESIS_VENV:-$root/target/schemathesis-venv}"
seed="${KEEL_SCHEMATHESIS_SEED:-$((RANDOM * 32768 + RANDOM))}"
examples="${KEEL_SCHEMATHESIS_EXAMPLES:-100}"
# The whole schemathesis run (typically 10 to 50 s here; most of it is the
# 3 s the admin node waits for an answer at a generated address where
# nothing listens). A run that does not end within it fails.
budget_s=150

fail() { echo "schemathesis: FAILED: $*" >&2; exit 1; }
[[ -x "$keel" ]] || fail "no keel binary at $keel (build it: cargo build --release -p keel-node)"

if [[ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != *"$VERSION"* ]]; then
    echo "installing schemathesis $VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || fail "python3 -m venv $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" \
        || fail "pip install schemathesis==$VERSION"
fi
"$venv/bin/schemathesis" --version

work="$(mktemp -d)"
dev_pid=""
cleanup() {
    # keel dev stops its nodes on SIGTERM (and they die with it on SIGKILL).
    if [[ -n "$dev_pid" ]] && kill -0 "$dev_pid" 2>/dev/null; then
        kill -TERM "$dev_pid" 2>/dev/null || true
        for _ in $(seq 150); do kill -0 "$dev_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$dev_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Three gRPC ports P..P+2 and three admin ports P+100..P+102, all free now;
# keel dev binds each first and refuses a taken one, so a race is a clear
# error, not a wrong cluster.
base=""
for _ in $(seq 50); do
    p=$((20000 + RANDOM % 30000))
    if python3 - "$p" <<'PY'
import socket, sys
p = int(sys.argv[1])
for port in [p, p + 1, p + 2, p + 100, p + 101, p + 102]:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        sys.exit(1)
    finally:
        s.close()
PY
    then base=$p; break; fi
done
[[ -n "$base" ]] || fail "found no free ports for a cluster"

"$keel" dev --dir "$work/data" --base-port "$base" >"$work/dev.out" 2>"$work/dev.err" &
dev_pid=$!
for _ in $(seq 600); do
    grep -q '^cluster ready' "$work/dev.out" && break
    kill -0 "$dev_pid" 2>/dev/null || { tail -20 "$work/dev.err" >&2; fail "keel dev exited before the cluster was ready"; }
    sleep 0.1
done
grep -q '^cluster ready' "$work/dev.out" || { tail -20 "$work/dev.err" >&2; fail "no leader within 60 s"; }
admin="127.0.0.1:$((base + 100))"
echo "cluster on $work/data: gRPC 127.0.0.1:$base-$((base + 2)), admin $admin-$((base + 102)); seed $seed"

started=$(date +%s)
st_rc=0
# From $work, where schemathesis leaves its cache; hooks.py points the
# addresses it generates at loopback and the cluster's own ports.
cd "$work"
export SCHEMATHESIS_HOOKS="$here/hooks.py"
export KEEL_FUZZ_GRPC_PORTS="$base,$((base + 1)),$((base + 2))"
timeout --signal=INT --kill-after=20 "$budget_s" \
    "$venv/bin/schemathesis" --config-file "$here/schemathesis.toml" run "http://$admin/api/v1/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --phases examples,coverage,fuzzing \
    --max-examples "$examples" \
    --seed "$seed" \
    --workers 1 \
    --request-timeout 120 \
    --generation-database none \
    --no-color \
    --report junit,har --report-junit-path "$work/junit.xml" --report-har-path "$work/requests.har" \
    >"$work/schemathesis.out" 2>&1 || st_rc=$?
elapsed=$(( $(date +%s) - started ))
cat "$work/schemathesis.out"
if (( st_rc == 124 )); then st_why="did not finish within ${budget_s} s"; fi

cluster_rc=0
python3 "$here/check_cluster.py" "$base" 3 >"$work/cluster.out" 2>&1 || cluster_rc=$?
cat "$work/cluster.out"

# What the fuzzer sent and what came back, per operation: "POST /api/v1/members 400×31 200×2".
python3 - "$work/requests.har" <<'PY' || true
import collections, json, re, sys, urllib.parse
counts = collections.defaultdict(collections.Counter)
for e in json.load(open(sys.argv[1]))["log"]["entries"]:
    path = urllib.parse.urlsplit(e["request"]["url"]).path
    path = re.sub(r"^/api/v1/members/.*", "/api/v1/members/{id}", path)
    counts[f'{e["request"]["method"]} {path}'][e["response"]["status"]] += 1
probes = 0
for op, c in sorted(counts.items()):
    if set(c) == {405}:  # an undocumented method, probed once per path
        probes += sum(c.values())
        continue
    print(f"  {op:<36} " + " ".join(f"{s}x{n}" for s, n in sorted(c.items())))
print(f"  {probes} requests with undocumented methods: 405")
PY
if [[ -n "${KEEL_SCHEMATHESIS_REPORTS:-}" ]]; then
    mkdir -p "$KEEL_SCHEMATHESIS_REPORTS"
    cp "$work"/*.xml "$work"/*.har "$work"/dev.err "$KEEL_SCHEMATHESIS_REPORTS"/ 2>/dev/null || true
fi
tests=$(python3 - "$work/junit.xml" <<'PY' 2>/dev/null || echo "?"
import sys, xml.etree.ElementTree as ET
r = ET.parse(sys.argv[1]).getroot()
s = r if r.tag == "testsuite" else r.find("testsuite")
print(f"{s.get('tests')} operations, {s.get('failures')} failed, {s.get('errors')} errors")
PY
)
summary="schemathesis $VERSION, seed $seed, ${elapsed} s: $tests (exit $st_rc${st_why:+, $st_why}); cluster: $(tail -1 "$work/cluster.out")"
echo "$summary"
(( st_rc == 0 && cluster_rc == 0 )) || fail "$summary"
