#!/usr/bin/env python3
"""Turns compare.sh's raw measurements into one Markdown table and a JSON file.

  report.py RAW.jsonl META.json OUT.json

RAW.jsonl: one {"round", "target", "metric", "value"} per line (value null = failed).
META.json: {"targets": [...], "status": {target: "ok" | "MISSING: why" | "FAILED: why"},
            "versions": {...}, "machine": {...}, "params": {...}}
"""

import json
import statistics
import sys

PEERS = ["envoy", "nginx", "haproxy"]
NAMES = {"direct": "direct", "pillion": "Pillion", "envoy": "Envoy", "nginx": "nginx", "haproxy": "HAProxy"}

# key, label, better ("hi" / "lo"), ratio vs direct?, decimals
ROWS = [
    ("rps_h1", "HTTP/1.1 closed loop, 50 conns (req/s)", "hi", True, 0),
    ("rps_wrk", "HTTP/1.1 closed loop, 50 conns, wrk -t1 cross-check (req/s)", "hi", True, 0),
    ("cpu_us", "proxy CPU per request (us, utime+stime)", "lo", False, 1),
    ("rate_p50", "latency @ {rate} req/s, 4 conns: p50 (us)", "lo", True, 0),
    ("rate_p99", "latency @ {rate} req/s: p99 (us)", "lo", True, 0),
    ("rate_p999", "latency @ {rate} req/s: p99.9 (us)", "lo", True, 0),
    ("add_rate_p50", "latency added over direct @ {rate} req/s: p50 (us)", "lo", False, 0),
    ("add_rate_p99", "latency added over direct @ {rate} req/s: p99 (us)", "lo", False, 0),
    ("c1_p50", "latency, 1 conn closed loop: p50 (us)", "lo", True, 0),
    ("add_c1_p50", "latency added over direct, 1 conn: p50 (us)", "lo", False, 0),
    ("rps_h2", "h2c, {h2conns} conns x {h2streams} streams (req/s)", "hi", True, 0),
    ("tcp_cold_mbps", "TCP relay bulk, first transfer after the HTTP runs (MB/s)", "hi", True, 0),
    ("tcp_cold_ratio", "TCP relay, first transfer / the direct one just before it", "hi", False, 2),
    ("tcp_mbps", "TCP relay bulk, the transfers after it (MB/s)", "hi", True, 0),
    ("tcp_ratio", "TCP relay / direct, later transfers alternated ({tcppairs} pair(s) a round, median)", "hi", False, 2),
    ("rss_idle_mb", "RSS idle (MB)", "lo", False, 1),
    ("rss_load_mb", "RSS under load, peak during HTTP/1.1 run (MB)", "lo", False, 1),
    ("rss_1k_mb", "RSS with 1,000 idle keep-alive conns (MB)", "lo", False, 1),
    ("errors", "errors + non-2xx + missed, all runs (count)", "lo", False, 0),
    ("noise_pct", "other work on the machine during the runs (% of a core, max)", "lo", False, 1),
]

# "added over direct": the median over rounds of (target - direct in the same round). The latency
# rounds measure every target seconds apart, so the difference within a round cancels the drift
# of the machine between rounds.
DERIVED = {
    "add_rate_p50": "rate_p50",
    "add_rate_p99": "rate_p99",
    "add_c1_p50": "c1_p50",
}


def fmt(v, dec):
    if v is None:
        return "n/a"
    if dec == 0:
        return f"{v:,.0f}"
    return f"{v:,.{dec}f}"


def main():
    raw_path, meta_path, out_path = sys.argv[1:4]
    meta = json.load(open(meta_path))
    targets = meta["targets"]
    status = meta["status"]
    values = {}  # (target, metric) -> [values by round]
    by_round = {}  # (target, metric) -> {round: value}
    for line in open(raw_path):
        line = line.strip()
        if not line:
            continue
        # compare.sh's jget prints Python's None for a null field (pillion bench reports null
        # latencies for a run in which no request got a response): read it as null.
        r = json.loads(line.replace('"value": None}', '"value": null}'))
        values.setdefault((r["target"], r["metric"]), []).append(r["value"])
        if r["value"] is not None:
            by_round.setdefault((r["target"], r["metric"]), {})[r["round"]] = r["value"]

    med = {}
    for t in targets:
        for key, *_ in ROWS:
            if key in DERIVED:
                continue
            vs = [v for v in values.get((t, key), []) if v is not None]
            if key == "errors":
                med[(t, key)] = sum(vs) if vs else None
            elif key == "noise_pct":
                med[(t, key)] = max(vs) if vs else None
            else:
                med[(t, key)] = statistics.median(vs) if vs else None
    for key, base in DERIVED.items():
        direct = by_round.get(("direct", base), {})
        for t in targets:
            mine = by_round.get((t, base), {})
            diffs = [v - direct[n] for n, v in mine.items() if n in direct]
            med[(t, key)] = statistics.median(diffs) if diffs and t != "direct" else None

    params = meta["params"]
    head = ["metric"] + [NAMES[t] for t in targets] + [f"Pillion / {NAMES[p]}" for p in PEERS if p in targets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, better, vs_direct, dec in ROWS:
        label = label.format(**params)
        arrow = " ↑" if better == "hi" else " ↓"
        cells = [label + arrow]
        d = med.get(("direct", key))
        for t in targets:
            if status.get(t) != "ok":
                cells.append(status[t].split(":")[0])
                continue
            v = med.get((t, key))
            if t == "direct" and key in ("cpu_us", "rss_idle_mb", "rss_load_mb", "rss_1k_mb", "tcp_cold_ratio", "tcp_ratio"):
                cells.append("-")
                continue
            if t == "direct" and key in DERIVED:
                cells.append("-")
                continue
            if v is None and key == "rps_wrk" and "wrk" not in (meta.get("versions") or {}):
                cells.append("MISSING (wrk)")
                continue
            c = fmt(v, dec)
            if key.endswith("_ratio") and v is not None:
                c += "x"
            if vs_direct and t != "direct" and v is not None and d:
                c += f" ({v / d:.2f}x)"
            cells.append(c)
        pv = med.get(("pillion", key))
        for p in PEERS:
            if p not in targets:
                continue
            qv = med.get((p, key))
            if status.get(p) != "ok" or status.get("pillion") != "ok":
                cells.append("n/a")
            elif key in ("errors", "noise_pct") or pv is None or qv is None or qv <= 0 or (key in DERIVED and pv < 0):
                cells.append("n/a")
            else:
                cells.append(f"{pv / qv:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)

    notes = []
    for t in targets:
        if status.get(t) != "ok":
            notes.append(f"- {NAMES[t]}: {status[t]}")
    for t, why in meta.get("na", {}).items():
        notes.append(f"- {NAMES.get(t, t)}: {why}")
    print(table)
    print()
    lat_rounds = params.get("latency_rounds")
    lat_note = (f"; latency rows: medians of {lat_rounds} interleaved round(s), latency added = median over"
                " those rounds of (target - direct in the same round)") if lat_rounds else ""
    print(f"Medians of {params['rounds']} round(s){lat_note}. ↑ higher is better, ↓ lower is better. "
          "(Nx) = this proxy / direct. Pillion / peer = Pillion's value divided by the peer's.")
    noisy = [NAMES[t] for t in targets if (med.get((t, "noise_pct")) or 0) > 5]
    if noisy:
        notes.append("- WARNING: other work ran on the machine during the runs of "
                     + ", ".join(noisy) + "; their numbers are disturbed (rerun on an idle machine)")
    if "nginx" in targets and status.get("nginx") == "ok":
        notes.append("- nginx: CPU and RSS are master + worker summed (shared pages counted twice)")
    for n in notes:
        print(n)

    out = {
        "machine": meta.get("machine"),
        "versions": meta.get("versions"),
        "params": params,
        "status": status,
        "na": meta.get("na", {}),
        "medians": {t: {key: med.get((t, key)) for key, *_ in ROWS} for t in targets},
        "rounds": {f"{t}.{m}": vs for (t, m), vs in values.items()},
        "table_markdown": table,
    }
    with open(out_path, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
