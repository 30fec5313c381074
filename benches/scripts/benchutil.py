#!/usr/bin/env python3
"""Small helpers for compare.sh and callgrind.sh (standard library only).

  benchutil.py ports N                      N distinct free TCP ports on 127.0.0.1 (asked from the OS)
  benchutil.py wait-tcp PORT SECS           exit 0 once 127.0.0.1:PORT accepts a connection
  benchutil.py wait-listen PORT SECS        exit 0 once a socket LISTENs on PORT (read from /proc/net/tcp,
                                            without connecting, so the server sees no traffic)
  benchutil.py tcp-sink PORT                L4 sink: per connection reads an 8-byte length L, then L bytes,
                                            answers with the 8-byte count it read
  benchutil.py tcp-send PORT BYTES          sends BYTES through 127.0.0.1:PORT to the sink; prints JSON
                                            {"bytes", "secs", "mb_per_s"} (MB = 10^6 bytes)
  benchutil.py idle-conns PORT N READYFILE  opens N keep-alive connections one after another, sends one
                                            HTTP/1.1 request on each and reads the response, writes
                                            "ok=K failed=F" to READYFILE, then holds them until killed
  benchutil.py proc PID...                  prints "cpu_ticks rss_kb" summed over the PIDs (utime+stime)
  benchutil.py hops TRACE TID...            from a tracefs text trace (epoll_wait enter/exit and
                                            sched_waking events) of a proxy's threads TID... and its peers:
                                            the proxy's time per hop, from epoll_wait returning to the first
                                            wake-up it causes (the forwarded bytes waking the peer), and the
                                            wake-ups of the proxy, from a peer's sched_waking to its
                                            epoll_wait returning; prints
                                            "hop_p50_us=X hop_mean_us=Y wake_mean_us=Z hops=N"
"""

import json
import os
import re
import resource
import socket
import struct
import sys
import threading
import time

HOST = "127.0.0.1"


def ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((HOST, 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def wait_tcp(port, secs):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return 0
        except OSError:
            time.sleep(0.05)
    return 1


def listening(port):
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[1].endswith(want) and cols[3] == "0A":
                        return True
        except OSError:
            pass
    return False


def wait_listen(port, secs):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if listening(port):
            return 0
        time.sleep(0.05)
    return 1


def recv_exact(conn, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def sink_conn(conn):
    try:
        (length,) = struct.unpack("!Q", recv_exact(conn, 8))
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        got = 0
        while got < length:
            n = conn.recv_into(view, min(len(buf), length - got))
            if n == 0:
                break
            got += n
        conn.sendall(struct.pack("!Q", got))
    except (OSError, EOFError):
        pass
    finally:
        conn.close()


def tcp_sink(port):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((HOST, port))
    srv.listen(128)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=sink_conn, args=(conn,), daemon=True).start()


def tcp_send(port, total):
    chunk = memoryview(bytes(1 << 20))
    start = time.monotonic()
    with socket.create_connection((HOST, port), timeout=60) as s:
        s.sendall(struct.pack("!Q", total))
        left = total
        while left > 0:
            n = min(left, len(chunk))
            s.sendall(chunk[:n])
            left -= n
        (got,) = struct.unpack("!Q", recv_exact(s, 8))
    secs = time.monotonic() - start
    if got != total:
        print(json.dumps({"error": f"sink counted {got} of {total} bytes"}))
        return 1
    print(json.dumps({"bytes": total, "secs": secs, "mb_per_s": total / secs / 1e6}))
    return 0


def read_response(s):
    """Reads one HTTP/1.1 response with a Content-Length or chunked body; True if 2xx."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    ok = lines[0].split(b" ")[1].startswith(b"2")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    if b"content-length" in headers:
        need = int(headers[b"content-length"])
        while len(rest) < need:
            chunk = s.recv(65536)
            if not chunk:
                return False
            rest += chunk
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                return False
            rest += chunk
    return ok


def idle_conns(port, n, readyfile):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    held, failed = [], 0
    deadline = time.monotonic() + 60
    for _ in range(n):
        if time.monotonic() > deadline:
            failed += 1
            continue
        try:
            s = socket.create_connection((HOST, port), timeout=5)
            s.sendall(req)
            if read_response(s):
                held.append(s)
            else:
                failed += 1
                s.close()
        except OSError:
            failed += 1
    with open(readyfile + ".tmp", "w") as f:
        f.write(f"ok={len(held)} failed={failed}\n")
    os.replace(readyfile + ".tmp", readyfile)
    time.sleep(600)


def proc(pids):
    ticks = rss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
        except OSError:
            pass
    print(ticks, rss)


TRACE_LINE = re.compile(r"^\s*(.*)-(\d+)\s+\[\d+\]\s+\S+\s+([\d.]+):\s+(\w+):\s+(.*)$")


WAKEE = re.compile(r"\bpid=(\d+)")


def hops(path, proxy_tids):
    # A hop, per proxy thread: from its epoll_wait returning until it wakes another task (the
    # bytes it forwarded woke the peer), unless it waits again without having woken anyone.
    # A wake-up: from the peer's sched_waking of a proxy thread until that thread's epoll_wait
    # returns (the vCPU woken, the thread scheduled).
    proxy = set(proxy_tids)
    woke_at = {}
    waking = {}
    spans = []
    wakes = []
    with open(path) as f:
        for line in f:
            m = TRACE_LINE.match(line)
            if not m:
                continue
            _, tid, ts, event, rest = m.groups()
            t = float(ts) * 1e6
            if event == "sched_waking":
                if tid in proxy:
                    start = woke_at.pop(tid, None)
                    if start is not None:
                        spans.append(t - start)
                else:
                    w = WAKEE.search(rest)
                    if w and w.group(1) in proxy:
                        waking[w.group(1)] = t
            elif tid not in proxy:
                continue
            elif event == "sys_exit":
                woke_at[tid] = t
                start = waking.pop(tid, None)
                if start is not None:
                    wakes.append(t - start)
            elif event == "sys_enter":
                woke_at.pop(tid, None)
    if not spans:
        print("error: no hops in the trace", file=sys.stderr)
        return 1
    spans.sort()
    mean = sum(spans) / len(spans)
    wake = f" wake_mean_us={sum(wakes) / len(wakes):.2f}" if wakes else ""
    print(f"hop_p50_us={spans[len(spans) // 2]:.1f} hop_mean_us={mean:.2f}{wake} hops={len(spans)}")
    return 0


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "ports":
        ports(int(args[0]))
    elif cmd == "wait-tcp":
        return wait_tcp(int(args[0]), float(args[1]))
    elif cmd == "wait-listen":
        return wait_listen(int(args[0]), float(args[1]))
    elif cmd == "tcp-sink":
        tcp_sink(int(args[0]))
    elif cmd == "tcp-send":
        return tcp_send(int(args[0]), int(args[1]))
    elif cmd == "idle-conns":
        idle_conns(int(args[0]), int(args[1]), args[2])
    elif cmd == "proc":
        proc(args)
    elif cmd == "hops":
        return hops(args[0], args[1:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
