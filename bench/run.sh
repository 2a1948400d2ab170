#!/usr/bin/env bash
# Side-by-side benchmark: scopegate against nginx in front of a fast fake forge (issue 6).
# What is measured and how to read the table: bench/README.md.
#
#   bench/run.sh                                     # full run: 10 s per measurement, 3 rounds
#   BENCH_DURATION=3s BENCH_ROUNDS=1 bench/run.sh    # quick look
#
# Knobs (environment): BENCH_DURATION (10s), BENCH_ROUNDS (3), BENCH_CONNS (64),
# BENCH_THREADS (2), BENCH_WORKLOADS ("1 2 3 4 5 6 7"), BENCH_TARGETS (all five),
# BENCH_BIG_MIB (256), BENCH_DL_REPEAT (5), BENCH_PACED_RATE (5000),
# BENCH_LOADGEN_CPU (0), BENCH_SERVER_CPU (1), BENCH_RESULTS (bench/RESULTS.md; "" = do not
# write), BENCH_SERVE_ONLY (start everything, print the URLs, serve until interrupted), BENCH_RAW (copy the raw JSON lines there), BENCH_PERF (path prefix: `perf record -g`
# scopegate during its wrk runs), SCOPEGATE_WORKERS (passed through to scopegate).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
DURATION=${BENCH_DURATION:-10s}
ROUNDS=${BENCH_ROUNDS:-3}
CONNS=${BENCH_CONNS:-64}
THREADS=${BENCH_THREADS:-2}
WORKLOADS=${BENCH_WORKLOADS:-"1 2 3 4 5 6 7"}
TARGETS=${BENCH_TARGETS:-"direct nginx-proxy nginx-auth nginx-auth-cached scopegate"}
BIG_MIB=${BENCH_BIG_MIB:-256}
DL_REPEAT=${BENCH_DL_REPEAT:-5}
PACED_RATE=${BENCH_PACED_RATE:-5000}
LOADGEN_CPU=${BENCH_LOADGEN_CPU:-0}
SERVER_CPU=${BENCH_SERVER_CPU:-1}
RESULTS=${BENCH_RESULTS-$HERE/RESULTS.md}
TOKEN_PREFIX=glcbt-bench-
TOKEN=${TOKEN_PREFIX}0
PKG=/api/v4/projects/1/packages/generic/pkg/1.0/small.bin
DENIED=/api/v4/projects/2/packages/generic/pkg/1.0/small.bin
BIG=/api/v4/projects/1/packages/generic/pkg/1.0/big.bin
UPLOAD=/api/v4/projects/1/packages/generic/pkg/1.0/upload
COMMAND="$0${*:+ $*} (BENCH_DURATION=$DURATION BENCH_ROUNDS=$ROUNDS BENCH_CONNS=$CONNS BENCH_WORKLOADS=\"$WORKLOADS\")"

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools -------------------------------------------------------------------------------
missing=()
for tool in nginx:nginx wrk:wrk curl:curl taskset:util-linux python3:python3; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ "$(nproc --all)" -ge 2 ] || die "needs 2 CPUs (load generator and server on separate cores)"

log "cargo build --release"
(cd "$ROOT" && cargo build --release --quiet --bin scopegate)
SCOPEGATE=$ROOT/target/release/scopegate

# --- scratch space and cleanup --------------------------------------------------------
# tmpfs when there is one: the 256 MiB files and nginx's temp files should not measure a disk.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then TMP=$(mktemp -d /dev/shm/scopegate-bench.XXXXXX); else TMP=$(mktemp -d); fi
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback port for nginx, which cannot report a port it picked itself. The tiny race
# (someone else binding it before nginx does) makes nginx fail loudly, never measure wrongly.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() { # URL [expected-status]: poll with a bounded deadline
    local deadline=$((SECONDS + 20)) code
    while [ $SECONDS -lt $deadline ]; do
        code=$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)
        if [ "$code" != "000" ]; then return 0; fi
        sleep 0.05
    done
    die "$1 did not answer"
}

# --- the fake forge: nginx serving the job look-up and package files ------------------
mkdir -p "$TMP/www/api/v4/projects/1/packages/generic/pkg/1.0" "$TMP/www/api/v4/projects/2/packages/generic/pkg/1.0"
head -c 1024 /dev/urandom >"$TMP/www$PKG"
cp "$TMP/www$PKG" "$TMP/www$DENIED"
head -c $((BIG_MIB * 1024 * 1024)) /dev/urandom >"$TMP/www$BIG"

nginx_common() { # DIR: the lines every nginx here shares
    cat <<CONF
worker_processes 1;
# Workers run as whoever runs the script (as root nginx would otherwise switch to nobody, who
# cannot read the private scratch directory).
user $(id -un) $(id -gn);
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 16384; }
CONF
}
temp_paths() { # DIR
    cat <<CONF
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
CONF
}

FORGE_PORT=$(free_port)
mkdir -p "$TMP/forge"
{
    nginx_common "$TMP/forge"
    cat <<CONF
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
$(temp_paths "$TMP/forge")
    # Tokens glcbt-bench-0 … glcbt-bench-9999 are live jobs of project 1 (g/app).
    map \$http_job_token \$job_id {
        "~^glcbt-bench-(?<n>[0-9]{1,4})\$" \$n;
        default "";
    }
    server {
        listen 127.0.0.1:$FORGE_PORT backlog=4096;
        root $TMP/www;
        location = /api/v4/job {
            default_type application/json;
            if (\$job_id = "") { return 401 '{"message":"401 Unauthorized"}'; }
            return 200 '{"id":1\$job_id,"status":"running","web_url":"http://127.0.0.1:$FORGE_PORT/g/app/-/jobs/1\$job_id","pipeline":{"project_id":1}}';
        }
        location /api/v4/projects/ {
            client_max_body_size 0;
            dav_methods PUT;
        }
    }
}
CONF
} >"$TMP/forge/nginx.conf"

start_nginx() { # NAME DIR: start nginx pinned to the server CPU, in the foreground, as a child
    taskset -c "$SERVER_CPU" "$NGINX" -p "$2" -c "$2/nginx.conf" -g 'daemon off;' 2>>"$2/error.log" &
    PIDS+=($!)
    eval "PID_$(echo "$1" | tr '-' '_')=$!"
}

start_nginx forge "$TMP/forge"
wait_http "http://127.0.0.1:$FORGE_PORT/api/v4/job"
[ "$(curl -s -H "JOB-TOKEN: $TOKEN" "http://127.0.0.1:$FORGE_PORT/api/v4/job")" != "" ] || die "forge: no job JSON"

# --- nginx targets ------------------------------------------------------------------------
nginx_proxy_conf() { # DIR PORT MODE(proxy|auth|auth-cached)
    local auth="" auth_loc="" cache_path="" cache=""
    if [ "$3" != proxy ]; then
        auth="auth_request /_auth;"
        if [ "$3" = auth-cached ]; then
            cache_path="proxy_cache_path $1/cache keys_zone=auth:10m levels=1:2;"
            cache="proxy_cache auth; proxy_cache_key \$http_job_token; proxy_cache_valid 200 30s; proxy_cache_valid 401 5s;"
        fi
        auth_loc="location = /_auth {
            internal;
            proxy_pass http://forge/api/v4/job;
            proxy_pass_request_body off;
            proxy_set_header Content-Length \"\";
            proxy_set_header Connection \"\";
            proxy_set_header X-Forwarded-For \$remote_addr;
            $cache
        }"
    fi
    nginx_common "$1"
    cat <<CONF
http {
    # Production-like: nginx logs every request, as scopegate does.
    access_log $1/access.log;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_max_body_size 0;
$(temp_paths "$1")
    $cache_path
    upstream forge {
        server 127.0.0.1:$FORGE_PORT;
        keepalive 128;
        keepalive_requests 1000000;
    }
    proxy_http_version 1.1;
    # Streaming both ways, as scopegate does (nginx's default buffers uploads to disk first).
    proxy_request_buffering off;
    server {
        listen 127.0.0.1:$2 backlog=4096;
        location / {
            $auth
            proxy_pass http://forge;
            proxy_set_header Host \$host;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
        $auth_loc
    }
}
CONF
}

declare -A URL
URL[direct]=http://127.0.0.1:$FORGE_PORT
PID_direct=$PID_forge
for mode in proxy auth auth-cached; do
    name=nginx-$mode
    port=$(free_port)
    mkdir -p "$TMP/$name"
    nginx_proxy_conf "$TMP/$name" "$port" "$mode" >"$TMP/$name/nginx.conf"
    start_nginx "$name" "$TMP/$name"
    URL[$name]=http://127.0.0.1:$port
    wait_http "${URL[$name]}/"
done

# --- scopegate ----------------------------------------------------------------------------
# The config lives in a directory of its own: scopegate watches the config's directory for
# reloads, and a log written beside it would wake the watcher on every access-log line
# (measured: ~20% of scopegate's CPU under workload 1; see RESULTS.md).
mkdir -p "$TMP/scopegate-config"
SG_CONFIG=$TMP/scopegate-config/proxy.yaml
cat >"$SG_CONFIG" <<CONF
listen: 127.0.0.1:0
upstream:
  url: http://127.0.0.1:$FORGE_PORT
admin:
  listen: 127.0.0.1:0
projects:
  - id: 1
    path: g/app
    visibility: private
  - id: 2                 # the denied workload's target: g/app is not on its allowlist
    path: g/secret
    visibility: private
    inbound:
      enabled: true
      projects: [g/other]
CONF
# Start-to-ready and idle RSS on fresh processes (median of 5), before any load.
log "scopegate: start-to-ready and idle RSS"
READY_JSON=$(python3 "$HERE/report.py" ready "$SERVER_CPU" "$SCOPEGATE" "$SG_CONFIG")
: >"$TMP/scopegate.log"
taskset -c "$SERVER_CPU" "$SCOPEGATE" run --config "$SG_CONFIG" 2>"$TMP/scopegate.log" &
PIDS+=($!)
PID_scopegate=$!
deadline=$((SECONDS + 20))
until grep -q 'scopegate listening' "$TMP/scopegate.log"; do
    [ $SECONDS -lt $deadline ] || die "scopegate did not start: $(cat "$TMP/scopegate.log")"
    sleep 0.05
done
SG_ADDR=$(grep -m1 'scopegate listening' "$TMP/scopegate.log" | sed -E 's/.*[^_]addr=([0-9.:]+).*/\1/')
URL[scopegate]=http://$SG_ADDR

pid_of_early() { local v="PID_${1//-/_}"; echo "${!v}"; }

# --- sanity: every target answers what the workloads expect -----------------------------
expect() { # NAME URL STATUS [curl args…]
    local got
    got=$(curl -s -o /dev/null -w '%{http_code}' "${@:4}" "$2")
    [ "$got" = "$3" ] || die "$1: $2 answered $got, expected $3"
}
for t in $TARGETS; do
    expect "$t" "${URL[$t]}$PKG" 200 -H "JOB-TOKEN: $TOKEN"
    expect "$t" "${URL[$t]}$PKG" 200 -H "JOB-TOKEN: ${TOKEN_PREFIX}999"
done
expect scopegate "${URL[scopegate]}$DENIED" 404 -H "JOB-TOKEN: $TOKEN"
expect scopegate "${URL[scopegate]}$PKG" 200
expect scopegate "${URL[scopegate]}$PKG" 401 -H "JOB-TOKEN: glcbt-not-a-job"

if [ -n "${BENCH_SERVE_ONLY:-}" ]; then
    # For profiling by hand: leave every target running until this script is interrupted.
    for t in $TARGETS; do echo "$t ${URL[$t]} pid $(pid_of_early "$t")"; done
    echo "paths: $PKG (allowed) $DENIED (denied) $BIG; token $TOKEN"
    wait
fi

# --- measurement -----------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
RAW=$TMP/raw.jsonl
: >"$RAW"

procs_of() { # PID: the process and its children (nginx master + worker)
    echo "$1"
    pgrep -P "$1" || true
}
cpu_ticks() { # PID…: utime+stime summed (fields 14 and 15 of /proc/PID/stat)
    local total=0 p line rest
    for p in "$@"; do
        read -r line <"/proc/$p/stat"
        rest=${line##*) }
        # shellcheck disable=SC2086
        set -- $rest
        total=$((total + ${12} + ${13}))
    done
    echo $total
}
reset_peak() { local p; for p in "$@"; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done; }
peak_kib() { # the largest VmHWM among the processes (nginx: the worker)
    local p max=0 v
    for p in "$@"; do
        v=$(awk '/^VmHWM/ {print $2}' "/proc/$p/status")
        [ "$v" -gt "$max" ] && max=$v
    done
    echo $max
}

pid_of() { local v="PID_${1//-/_}"; echo "${!v}"; }

# One wrk measurement; appends a JSON line to $RAW.
run_wrk() { # ROUND WORKLOAD TARGET PATH EXPECT_STATUS_ERRORS(0|all) [env…]
    local round=$1 wl=$2 target=$3 path=$4 expect_errors=$5
    shift 5
    local procs c0 c1 out
    mapfile -t procs < <(procs_of "$(pid_of "$target")")
    reset_peak "${procs[@]}"
    c0=$(cpu_ticks "${procs[@]}")
    local perf_pid=""
    if [ -n "${BENCH_PERF:-}" ] && [ "$target" = scopegate ]; then
        perf record -q -g -p "${procs[0]}" -o "$BENCH_PERF-w$wl-r$round.data" 2>/dev/null &
        perf_pid=$!
    fi
    out=$(env "$@" taskset -c "$LOADGEN_CPU" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" \
        -s "$HERE/wrk.lua" "${URL[$target]}$path" | tail -n1)
    c1=$(cpu_ticks "${procs[@]}")
    if [ -n "$perf_pid" ]; then kill -INT "$perf_pid" && wait "$perf_pid" || true; fi
    printf '{"round":%s,"workload":"%s","target":"%s","cpu_ticks":%s,"clk_tck":%s,"peak_kib":%s,"expect_errors":"%s","wrk":%s}\n' \
        "$round" "$wl" "$target" $((c1 - c0)) "$CLK_TCK" "$(peak_kib "${procs[@]}")" "$expect_errors" "$out" >>"$RAW"
}

# Workload 5: a BIG_MIB download (median of DL_REPEAT curls) and upload.
run_stream() { # ROUND TARGET
    local round=$1 target=$2 procs c0 c1 i speeds="" code
    mapfile -t procs < <(procs_of "$(pid_of "$target")")
    for dir in down up; do
        speeds=""
        reset_peak "${procs[@]}"
        c0=$(cpu_ticks "${procs[@]}")
        for i in $(seq "$DL_REPEAT"); do
            if [ $dir = down ]; then
                read -r speed code < <(taskset -c "$LOADGEN_CPU" curl -s -o /dev/null -H "JOB-TOKEN: $TOKEN" \
                    -w '%{speed_download} %{http_code}\n' "${URL[$target]}$BIG")
                [ "$code" = 200 ] || die "$target download answered $code"
            else
                read -r speed code < <(taskset -c "$LOADGEN_CPU" curl -s -o /dev/null -H "JOB-TOKEN: $TOKEN" \
                    -H 'Expect:' -H 'Content-Type: application/octet-stream' -T "$TMP/www$BIG" \
                    -w '%{speed_upload} %{http_code}\n' "${URL[$target]}$UPLOAD-$target.bin")
                case $code in 200 | 201 | 204) ;; *) die "$target upload answered $code" ;; esac
            fi
            speeds="$speeds${speeds:+,}$speed"
        done
        c1=$(cpu_ticks "${procs[@]}")
        printf '{"round":%s,"workload":"5-%s","target":"%s","cpu_ticks":%s,"clk_tck":%s,"peak_kib":%s,"bytes_each":%s,"speeds":[%s]}\n' \
            "$round" "$dir" "$target" $((c1 - c0)) "$CLK_TCK" "$(peak_kib "${procs[@]}")" $((BIG_MIB * 1024 * 1024)) "$speeds" >>"$RAW"
    done
}

# Paced: connections x (1000 ms / delay) ≈ PACED_RATE req/s (closed loop; see README).
PACED_CONNS=50
PACED_DELAY=$((PACED_CONNS * 1000 / PACED_RATE))

measure() { # ROUND WORKLOAD TARGET
    local r=$1 w=$2 t=$3
    case $w in
    1) run_wrk "$r" 1 "$t" "$PKG" 0 BENCH_TOKEN="$TOKEN" ;;
    2) run_wrk "$r" 2 "$t" "$PKG" 0 BENCH_TOKENS=1000 BENCH_TOKEN_PREFIX="$TOKEN_PREFIX" ;;
    3) run_wrk "$r" 3 "$t" "$DENIED" "$([ "$t" = scopegate ] && echo all || echo 0)" BENCH_TOKEN="$TOKEN" ;;
    4) run_wrk "$r" 4 "$t" "$PKG" 0 ;;
    5) run_stream "$r" "$t" ;;
    6) run_wrk "$r" 6 "$t" "$PKG" 0 BENCH_TOKEN="$TOKEN" BENCH_CLOSE=1 ;;
    7) CONNS=$PACED_CONNS run_wrk "$r" 7 "$t" "$PKG" 0 BENCH_TOKEN="$TOKEN" BENCH_DELAY_MS="$PACED_DELAY" ;;
    *) die "unknown workload $w" ;;
    esac
}

applies() { # WORKLOAD TARGET: auth_request answers a request without a token 401, and cannot
    # deny by scope: workload 3 and 4 compare scopegate with the forwarders only.
    case "$1:$2" in
    3:nginx-auth* | 4:nginx-auth*) return 1 ;;
    esac
    return 0
}

log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
for round in $(seq "$ROUNDS"); do
    for w in $WORKLOADS; do
        for t in $TARGETS; do
            applies "$w" "$t" || continue
            log "round $round/$ROUNDS workload $w $t"
            measure "$round" "$w" "$t"
        done
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# A 1,000-request burst of one fresh token: how many forge look-ups (from /metrics).
ADMIN=$(grep -m1 'scopegate listening' "$TMP/scopegate.log" | sed -E 's/.*admin=([0-9.:]+).*/\1/')
BURST_JSON=$(python3 "$HERE/report.py" burst "$LOADGEN_CPU" "${URL[scopegate]}$PKG" "http://$ADMIN/metrics" "${TOKEN_PREFIX}4321")

python3 "$HERE/report.py" table "$RAW" \
    --ready "$READY_JSON" --burst "$BURST_JSON" \
    --started "$STARTED" --command "$COMMAND" --load "$LOAD_BEFORE -> $LOAD_AFTER" \
    --root "$ROOT" --duration "$DURATION" --rounds "$ROUNDS" --conns "$CONNS" \
    ${RESULTS:+--write "$RESULTS"}
cp "$RAW" "${BENCH_RAW:-/dev/null}" 2>/dev/null || true
