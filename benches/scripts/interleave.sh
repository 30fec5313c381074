#!/usr/bin/env bash
# Interleaved runs: the same load against several proxies, round by round, so that a noisy
# minute on a shared machine lands on every target alike (compare.sh runs each target once per
# round, minutes apart).
#
#   benches/scripts/interleave.sh [--rounds N] [--load wrk|bench|latency|hops] TARGET...
#
# TARGET is a pillion binary (a path), `haproxy` or `nginx`. In each round every target is
# started in turn, pinned to CPU 0 with one worker (the echo upstream and the load run on CPU 1),
# warmed up with 5,000 requests, measured, and stopped. Loads:
#   wrk      (default) wrk -t1 -c50 -d5s: the proxy's CPU per request (utime+stime from /proc,
#            nginx master and worker summed), req/s, and the upstream's CPU per request
#   bench    pillion bench -c 50 -n 100000: the same three
#   latency  pillion bench -c 1 -d 3s (p50), then -c 4 --rate 5000 -d 5s after 1s of warm-up
#            (p50 and p99)
#   hops     pillion bench -c 1 -d 3s, traced for half a second with tracefs (needs root): the
#            proxy's own time per hop, from its epoll_wait returning to the wake-up its forwarded
#            bytes cause on the other side, and the wake-up of the proxy, from the peer's
#            sched_waking to the proxy's epoll_wait returning. The latency a proxy adds is two
#            hops plus four cross-CPU wake-ups; the wake-ups are the machine's, the hops the proxy's.
# Prints every round, then the medians per target.
#
# Pillion runs with request ids, trace context and forwarding headers off, as in compare.sh;
# FORWARDED=1 leaves the forwarding headers on (for binaries that predate `forwarded_headers`).
# Environment: PILLION (the echo app and load generator; default target/release/pillion).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
ROUNDS=6
LOAD=wrk
TARGETS=()
while (($#)); do
    case $1 in
        --rounds) ROUNDS=${2:?--rounds N}; shift 2 ;;
        --load) LOAD=${2:?--load wrk|bench|latency|hops}; shift 2 ;;
        -h | --help) sed -n '2,24p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) TARGETS+=("$1"); shift ;;
    esac
done
case $LOAD in wrk | bench | latency | hops) ;; *) echo "error: unknown load $LOAD" >&2; exit 2 ;; esac
((${#TARGETS[@]})) || { echo "usage: $0 [--rounds N] [--load wrk|bench|latency|hops] TARGET..." >&2; exit 2; }
PILLION=${PILLION:-$ROOT/target/release/pillion}
UTIL=$ROOT/benches/scripts/benchutil.py
[[ -x $PILLION ]] || { echo "error: $PILLION not found; build it: cargo build --release -p pillion" >&2; exit 1; }
for t in "${TARGETS[@]}"; do
    case $t in
        haproxy | nginx) command -v "$t" >/dev/null || { echo "error: $t is not installed" >&2; exit 1; } ;;
        *) [[ -x $t ]] || { echo "error: $t is not an executable" >&2; exit 1; } ;;
    esac
done
[[ $LOAD != wrk ]] || command -v wrk >/dev/null || { echo "error: wrk is not installed" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/interleave.XXXXXX")
PIDS=()
alive() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    [[ ${s:0:1} != Z ]]
}
stop_pid() { # PID: SIGTERM, wait up to 5 s, SIGKILL
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
}
TRACEFS=""
TRACE_BUF=""
TRACE_ON=""
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    reset_tracing
    rm -rf "$WORK"
}
setup_tracing() { # for --load hops: only epoll_wait enter/exit and sched_waking, of the proxy
    local dir ids
    for dir in /sys/kernel/tracing /sys/kernel/debug/tracing; do
        if [[ -w $dir/trace ]]; then TRACEFS=$dir; break; fi
    done
    [[ -n $TRACEFS ]] || { echo "error: --load hops needs a writable tracefs (root, /sys/kernel/tracing)" >&2; exit 1; }
    case $(uname -m) in
        x86_64) ids="id == 232 || id == 281 || id == 441" ;; # epoll_wait, epoll_pwait, epoll_pwait2
        aarch64) ids="id == 22 || id == 441" ;;
        *) echo "error: --load hops: epoll_wait's syscall number on $(uname -m) is not known here" >&2; exit 1 ;;
    esac
    TRACE_ON=$(cat "$TRACEFS/tracing_on")
    echo 0 >"$TRACEFS/tracing_on"
    : >"$TRACEFS/set_event"
    TRACE_BUF=$(cat "$TRACEFS/buffer_size_kb")
    echo 16384 >"$TRACEFS/buffer_size_kb"
    echo "$ids" >"$TRACEFS/events/raw_syscalls/sys_enter/filter"
    echo "$ids" >"$TRACEFS/events/raw_syscalls/sys_exit/filter"
}
reset_tracing() {
    [[ -n $TRACEFS ]] || return 0
    echo 0 >"$TRACEFS/tracing_on" || true
    : >"$TRACEFS/set_event" || true
    : >"$TRACEFS/set_event_pid" || true
    echo 0 >"$TRACEFS/events/raw_syscalls/sys_enter/filter" || true
    echo 0 >"$TRACEFS/events/raw_syscalls/sys_exit/filter" || true
    [[ -z $TRACE_BUF ]] || echo "$TRACE_BUF" >"$TRACEFS/buffer_size_kb" || true
    : >"$TRACEFS/trace" || true
    [[ -z $TRACE_ON ]] || echo "$TRACE_ON" >"$TRACEFS/tracing_on" || true
}
tids() { # PID... -> the thread ids of the PIDs, one per line
    local p
    for p in "$@"; do ls "/proc/$p/task" 2>/dev/null || true; done
}
trace_window() { # OUT PID... : half a second of the PIDs' threads' events into OUT
    local out=$1 e
    shift
    tids "$@" | tr '\n' ' ' >"$TRACEFS/set_event_pid"
    : >"$TRACEFS/trace"
    for e in raw_syscalls:sys_enter raw_syscalls:sys_exit sched:sched_waking; do echo "$e" >>"$TRACEFS/set_event"; done
    echo 1 >"$TRACEFS/tracing_on"
    sleep 0.5
    echo 0 >"$TRACEFS/tracing_on"
    cat "$TRACEFS/trace" >"$out"
    : >"$TRACEFS/set_event"
    : >"$TRACEFS/set_event_pid"
}
trap cleanup EXIT
if [[ $LOAD == hops ]]; then setup_tracing; fi
trap 'exit 130' INT TERM
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
taskset -pc 1 $$ >/dev/null

read -r ECHO_PORT < <(python3 "$UTIL" ports 1)
"$PILLION" echo --listen "127.0.0.1:$ECHO_PORT" --body-size 128 >"$WORK/echo.log" 2>&1 &
ECHO_PID=$!
PIDS+=("$ECHO_PID")
python3 "$UTIL" wait-listen "$ECHO_PORT" 15 || { echo "error: the echo app did not start" >&2; exit 1; }

# shellcheck source=benches/scripts/proxies.sh
source "$ROOT/benches/scripts/proxies.sh"
start() { # TARGET DIR PORT ADMIN_PORT -> prints the PID
    local t=$1 d=$2
    HTTP_PORT=$3 ADMIN_PORT=$4
    case $t in
        haproxy)
            write_haproxy "$d"
            taskset -c 0 haproxy -f "$d/haproxy.cfg" -db >"$d/proxy.log" 2>&1 &
            ;;
        nginx)
            write_nginx "$d"
            taskset -c 0 nginx -c "$d/nginx.conf" >"$d/proxy.log" 2>&1 &
            ;;
        *)
            write_pillion "$d"
            taskset -c 0 "$t" run --workers 1 --config "$d/pillion.yaml" >"$d/proxy.log" 2>&1 &
            ;;
    esac
    echo $!
}

cpu_ticks() { # PID...: utime+stime summed, with the children of each (nginx's worker)
    local pids=("$@") p
    for p in "$@"; do pids+=($(pgrep -P "$p" 2>/dev/null || true)); done
    python3 "$UTIL" proc "${pids[@]}" | cut -d' ' -f1
}

json_field() { # EXPR over the JSON on stdin (r = the report)
    python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"
}

one() { # TARGET -> one line of results
    local t=$1 d port admin pid p0 e0 p1 e1 n rps out
    d=$(mktemp -d "$WORK/run.XXXX")
    read -r port admin < <(python3 "$UTIL" ports 2)
    pid=$(start "$t" "$d" "$port" "$admin")
    PIDS+=("$pid")
    if ! python3 "$UTIL" wait-listen "$port" 15; then
        echo "error: $t did not start; log:" >&2
        cat "$d/proxy.log" >&2
        exit 1
    fi
    local url="http://127.0.0.1:$port/"
    "$PILLION" bench -c 50 -n 5000 --no-progress "$url" >/dev/null 2>&1
    case $LOAD in
        latency)
            local c1 rate
            c1=$("$PILLION" bench --json --no-progress -c 1 -d 3s "$url" |
                json_field '"p50_1conn_us=%d" % r["latency_us"]["p50"]')
            rate=$("$PILLION" bench --json --no-progress -c 4 --rate 5000 --warmup 1s -d 5s "$url" |
                json_field '"p50_rate_us=%d p99_rate_us=%d" % (r["latency_us"]["p50"], r["latency_us"]["p99"])')
            out="$c1 $rate"
            ;;
        hops)
            local bp procs
            "$PILLION" bench --no-progress -c 1 -d 3s "$url" >/dev/null 2>&1 &
            bp=$!
            sleep 1
            procs="$pid $(pgrep -P "$pid" 2>/dev/null || true)"
            # The proxy's threads, and its peers' for the wake-ups they cause.
            trace_window "$d/trace.txt" $procs "$bp" "$ECHO_PID"
            wait "$bp"
            out=$(python3 "$UTIL" hops "$d/trace.txt" $(tids $procs))
            ;;
        *)
            p0=$(cpu_ticks "$pid")
            e0=$(cpu_ticks "$ECHO_PID")
            if [[ $LOAD == wrk ]]; then
                local w
                w=$(wrk -t1 -c50 -d5s "$url")
                n=$(awk '/requests in/ {print $1}' <<<"$w")
                rps=$(awk '/Requests\/sec/ {printf "%d", $2}' <<<"$w")
            else
                n=100000
                rps=$("$PILLION" bench --json --no-progress -c 50 -n "$n" "$url" | json_field 'round(r["rps"])')
            fi
            p1=$(cpu_ticks "$pid")
            e1=$(cpu_ticks "$ECHO_PID")
            local hz
            hz=$(getconf CLK_TCK)
            out=$(python3 -c "print(f'cpu_us={($p1-$p0)/$hz/$n*1e6:.2f} rps=$rps echo_cpu_us={($e1-$e0)/$hz/$n*1e6:.2f}')")
            ;;
    esac
    stop_pid "$pid"
    echo "$out"
}

RESULTS=$WORK/results.txt
: >"$RESULTS"
for ((r = 1; r <= ROUNDS; r++)); do
    for t in "${TARGETS[@]}"; do
        line="$t $(one "$t")"
        echo "round $r: $line"
        echo "$line" >>"$RESULTS"
    done
done

python3 - "$RESULTS" <<'EOF'
import collections, statistics, sys
runs = collections.OrderedDict()
for line in open(sys.argv[1]):
    target, *fields = line.split()
    for f in fields:
        k, v = f.split("=")
        runs.setdefault(target, collections.OrderedDict()).setdefault(k, []).append(float(v))
print("\nmedians:")
for target, fields in runs.items():
    cells = [f"{k} {statistics.median(v):g} ({', '.join(f'{x:g}' for x in v)})" for k, v in fields.items()]
    print(f"  {target}: " + "; ".join(cells))
EOF
