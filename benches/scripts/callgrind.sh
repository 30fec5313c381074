#!/usr/bin/env bash
# Deterministic figure: instructions per proxied request under valgrind --tool=callgrind.
#
#   benches/scripts/callgrind.sh [REQUESTS]        (default 2000)
#
# Runs `pillion run --workers 1` (the release binary) under callgrind twice, pinned to CPU 0:
#   idle:   starts, serves nothing, SIGTERM;
#   loaded: starts, REQUESTS HTTP/1.1 keep-alive requests over one connection go through it to the
#           echo app (`pillion bench -n REQUESTS -c 1`, not under valgrind, on CPU 1), SIGTERM.
# Prints (Ir loaded - Ir idle) / REQUESTS and the top functions by inclusive and by self cost.
# Readiness is read from /proc/net/tcp (no probe request), so nothing but the load reaches the proxy.
# Environment: PILLION (default target/release/pillion), TOP (default 15).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
REQUESTS=${1:-2000}
TOP=${TOP:-15}
PILLION=${PILLION:-$ROOT/target/release/pillion}
UTIL=$ROOT/benches/scripts/benchutil.py
[[ -x $PILLION ]] || { echo "error: $PILLION not found; build it: cargo build --release -p pillion" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "error: valgrind is required (apt-get install valgrind)" >&2; exit 1; }
command -v callgrind_annotate >/dev/null || { echo "error: callgrind_annotate is required (valgrind)" >&2; exit 1; }

mkdir -p "$ROOT/target/bench"
WORK=$(mktemp -d "$ROOT/target/bench/callgrind.XXXXXX")
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

PIDS=()
alive() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    [[ ${s:0:1} != Z ]]
}
stop_pid() { # PID [SECS]: SIGTERM, wait, SIGKILL
    local pid=$1 limit=${2:-10} i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < limit * 10; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid" 2; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
taskset -pc 1 $$ >/dev/null 2>&1 || true

read -r ECHO_PORT < <(python3 "$UTIL" ports 1)
taskset -c 1 "$PILLION" echo --listen "127.0.0.1:$ECHO_PORT" --body-size 128 >"$WORK/echo.log" 2>&1 &
PIDS+=($!)
python3 "$UTIL" wait-listen "$ECHO_PORT" 15 || { echo "error: echo did not start" >&2; exit 1; }

total_ir() { # callgrind out file -> total Ir
    awk '/^(summary|totals):/ { print $2; exit }' "$1"
}

profile() { # NAME REQUESTS -> writes $WORK/NAME.out
    local name=$1 n=$2 port admin pid
    read -r port admin < <(python3 "$UTIL" ports 2)
    cat >"$WORK/$name.yaml" <<EOF
admin: { address: 127.0.0.1:$admin, health_address: null }
listeners:
  - name: in
    address: 127.0.0.1:$port
    protocol: http
    request_id: false
    trace_context: false
    cluster: app
clusters:
  - name: app
    endpoints: [127.0.0.1:$ECHO_PORT]
EOF
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.out" \
        "$PILLION" run --config "$WORK/$name.yaml" --workers 1 --log-level warn \
        >"$WORK/$name.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    if ! python3 "$UTIL" wait-listen "$port" 120 || ! python3 "$UTIL" wait-listen "$admin" 30; then
        echo "error: pillion under valgrind did not start; see $WORK/$name.log" >&2
        exit 1
    fi
    if ((n > 0)); then
        timeout --kill-after=5 600 "$PILLION" bench "http://127.0.0.1:$port/" -n "$n" -c 1 \
            --timeout 30s --json --no-progress >"$WORK/$name.json"
        local got bad
        got=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["status"]["2xx"])' "$WORK/$name.json")
        bad=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); e=r["errors"]; print(e["connect"]+e["timeout"]+e["other"])' "$WORK/$name.json")
        if [[ $got != "$n" || $bad != 0 ]]; then
            echo "error: expected $n 2xx responses, got $got (errors: $bad); see $WORK/$name.json" >&2
            exit 1
        fi
    fi
    # SIGTERM: pillion drains (no connection is open any more) and exits; callgrind writes its file.
    kill -TERM "$pid"
    local i
    for ((i = 0; i < 600; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
        echo "error: pillion did not exit within 60 s of SIGTERM" >&2
        exit 1
    fi
    wait "$pid" || true
    [[ -s $WORK/$name.out ]] || { echo "error: no callgrind output for $name" >&2; exit 1; }
}

log "idle run (start, no request, SIGTERM)"
profile idle 0
log "loaded run ($REQUESTS requests over 1 keep-alive connection)"
profile loaded "$REQUESTS"

functions() { # callgrind_annotate output -> the first $TOP functions, without file paths; with
    # INCLUSIVE=1, the process and runtime entry frames (main, block_on, ...) are left out, and a
    # function listed twice (inlined into several files) is shown once
    awk '/file:function/ { on = 1; next } on && /^-+$/ { next } on && !NF { on = 0 } on' |
        sed -E 's/^( *[0-9,]+ \( *[0-9.]+%\))  [^:]*:/\1  /; s/ \[[^]]*\]$//' |
        awk -v inc="${INCLUSIVE:-0}" '
            { name = $0; sub(/^ *[0-9,]+ \( *[0-9.]+%\)  /, "", name) }
            inc && name ~ /^(0x[0-9a-f]+|\(below main\)|__libc_start_main.*|main|std::rt::lang_start.*|std::sys::backtrace::__rust_begin_short_backtrace|pillion::main|tokio::runtime::runtime::Runtime::block_on)$/ { next }
            inc && seen[name]++ { next }
            { print }' |
        cut -c1-180 | head -n "$TOP" || true
}

IDLE=$(total_ir "$WORK/idle.out")
LOADED=$(total_ir "$WORK/loaded.out")
PER=$(((LOADED - IDLE) / REQUESTS))

echo
echo "callgrind, $("$PILLION" --version 2>/dev/null | head -1), valgrind $(valgrind --version | sed 's/valgrind-//')"
printf 'Ir idle run:    %15s\n' "$IDLE"
printf 'Ir loaded run:  %15s   (%s HTTP/1.1 requests, 1 keep-alive connection)\n' "$LOADED" "$REQUESTS"
echo
echo "Instructions per proxied request: $PER"
echo
echo "Top $TOP functions by inclusive cost (loaded run; entry frames main ... block_on left out):"
{ callgrind_annotate --inclusive=yes "$WORK/loaded.out" 2>/dev/null | INCLUSIVE=1 functions; } || true
echo
echo "Top $TOP functions by self cost (loaded run):"
{ callgrind_annotate "$WORK/loaded.out" 2>/dev/null | functions; } || true
echo
echo "Profiles: ${WORK#"$ROOT"/}/{idle,loaded}.out (callgrind_annotate / kcachegrind)"
printf '{"requests": %d, "ir_idle": %d, "ir_loaded": %d, "ir_per_request": %d}\n' \
    "$REQUESTS" "$IDLE" "$LOADED" "$PER" >"$ROOT/target/bench/callgrind.json"
