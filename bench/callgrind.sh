#!/usr/bin/env bash
# Instructions per request of scopegate (valgrind --tool=callgrind): load-independent, so the
# honest before/after measure of an optimisation on a busy machine.
#
#   BENCH_SERVE_ONLY=1 bench/run.sh &        # prints "direct http://127.0.0.1:PORT …"
#   FORGE=http://127.0.0.1:PORT bench/callgrind.sh [workload: allowed|denied|notoken] [requests]
#
# Starts the release build under callgrind against that forge, warms it up (connection pool,
# token cache), zeroes the counters, sends REQUESTS requests over 8 keep-alive connections, and
# prints instructions per request and the top functions (inclusive) into $OUT (default
# /tmp/scopegate-callgrind.*).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
: "${FORGE:?FORGE=http://127.0.0.1:PORT of a running fake forge (BENCH_SERVE_ONLY=1 bench/run.sh)}"
WORKLOAD=${1:-allowed}
REQUESTS=${2:-4000}
OUT=${OUT:-/tmp/scopegate-callgrind}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
(cd "$ROOT" && cargo build --release --quiet --bin scopegate)
TMP=$(mktemp -d)
SG_PID=""
cleanup() { [ -n "$SG_PID" ] && kill "$SG_PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
mkdir -p "$TMP/config"
cat >"$TMP/config/proxy.yaml" <<CONF
listen: 127.0.0.1:0
upstream:
  url: $FORGE
admin:
  listen: 127.0.0.1:0
projects:
  - id: 1
    path: g/app
  - id: 2
    path: g/secret
    inbound: { enabled: true, projects: [g/other] }
CONF
case $WORKLOAD in
allowed) PATH_=/api/v4/projects/1/packages/generic/pkg/1.0/small.bin; TOKEN=glcbt-bench-0; EXPECT=200 ;;
denied) PATH_=/api/v4/projects/2/packages/generic/pkg/1.0/small.bin; TOKEN=glcbt-bench-0; EXPECT=404 ;;
notoken) PATH_=/api/v4/projects/1/packages/generic/pkg/1.0/small.bin; TOKEN=""; EXPECT=200 ;;
*) echo "unknown workload $WORKLOAD" >&2; exit 2 ;;
esac
: >"$TMP/log"
# One worker, as bench/run.sh's pinned scopegate runs (Tokio's current-thread runtime);
# SCOPEGATE_WORKERS=2 measures the multi-thread scheduler instead.
SCOPEGATE_WORKERS=${SCOPEGATE_WORKERS:-1} valgrind --tool=callgrind --callgrind-out-file="$OUT.%p.out" \
    "$ROOT/target/release/scopegate" run --config "$TMP/config/proxy.yaml" 2>"$TMP/log" &
SG_PID=$!
deadline=$((SECONDS + 60))
until grep -q 'scopegate listening' "$TMP/log"; do
    [ $SECONDS -lt $deadline ] || { cat "$TMP/log"; exit 1; }
    sleep 0.2
done
ADDR=$(grep -m1 'scopegate listening' "$TMP/log" | sed -E 's/.*[^_]addr=([0-9.:]+).*/\1/')
python3 - "$ADDR" "$PATH_" "$TOKEN" "$REQUESTS" "$EXPECT" "$SG_PID" <<'PY'
import socket, subprocess, sys
addr, path, token, n, expect, pid = sys.argv[1:]
host, port = addr.rsplit(":", 1)
conns = [socket.create_connection((host, int(port))) for _ in range(8)]
req = f"GET {path} HTTP/1.1\r\nHost: {addr}\r\n" + (f"JOB-TOKEN: {token}\r\n" if token else "") + "\r\n"
def one(s):
    s.sendall(req.encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, body = buf.split(b"\r\n\r\n", 1)
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += s.recv(65536)
    status = head.split()[1].decode()
    assert status == expect, (status, head)
for s in conns:  # warm-up: pool connections, token cache, lazy statics
    for _ in range(20):
        one(s)
subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
for i in range(int(n)):
    one(conns[i % len(conns)])
subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
PY
# The dump after the load holds exactly the load's instructions.
DUMP=$(ls -t "$OUT.$SG_PID.out".* 2>/dev/null | head -1)
TOTAL=$(callgrind_annotate "$DUMP" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
echo "workload=$WORKLOAD requests=$REQUESTS instructions=$TOTAL per_request=$((TOTAL / REQUESTS))"
callgrind_annotate --inclusive=yes "$DUMP" 2>/dev/null | head -80 >"$OUT.$WORKLOAD.top.txt"
echo "top functions: $OUT.$WORKLOAD.top.txt"
