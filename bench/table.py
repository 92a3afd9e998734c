#!/usr/bin/env python3
"""Prints the markdown tables of BENCHMARKS.md from kartei-bench JSON reports: bench/table.py DIR [PEER-DIR].

Reports of the interleaved mode (bench/versus.sh, `"mode": "versus"`) get a table of their own."""
import glob, json, os, sys

def load(d):
    out, versus = {}, []
    for path in sorted(glob.glob(os.path.join(d, "*.json"))):
        r = json.load(open(path))
        if r.get("mode") == "versus":
            versus.append(r)
        else:
            out[(r["label"], r["n"])] = r
    return out, versus

def versus_table(reports):
    """One row per interleaved run: each side's median over the rounds, and the rounds' ratios."""
    print("| N | rounds | A | B | A first / median ms | B first / median ms | B / A per round: 25th / median / 75th (min–max) | B / A first sync |")
    print("|" + "---|" * 8)
    for r in reports:
        a, b = r["a"], r["b"]
        lo, hi = min(r["ratio_each"]), max(r["ratio_each"])
        print(f'| {r["n"]:,} | {r["rounds"]} | {a["label"]} | {b["label"]} | '
              f'{a["full_sync_ms"]:.1f} / {a["full_sync_median_ms"]:.1f} | {b["full_sync_ms"]:.1f} / {b["full_sync_median_ms"]:.1f} | '
              f'{r["ratio_p25"]:.1f}× / **{r["ratio_median"]:.1f}×** / {r["ratio_p75"]:.1f}× ({lo:.1f}–{hi:.1f}×) | {r["ratio_first"]:.1f}× |')

def ph(r, key):
    return next(p for p in r["phases"] if p["key"] == key)

def row(r):
    up, pf, mg, sy, q, g, u = (ph(r, k) for k in ["upload", "propfind", "multiget", "sync", "query", "get", "update"])
    rss = r.get("full_sync_peak_rss_mb")
    startup = r.get("startup_filled_ms")
    return [
        r["label"], f'{r["n"]:,}',
        f'{up["req_per_s"]:,.0f} ({up["rate_by_tenth"][0]:,.0f} → {up["rate_by_tenth"][9]:,.0f})',
        f'{pf["wall_ms"]:.0f}', f'{mg["wall_ms"]:.0f} ({mg["cards_per_s"]:,.0f} cards/s)',
        full_sync(r),
        f'{sy["initial_ms"]:.0f}', f'{sy["delta_first_ms"]:.2f} / {sy["delta_median_ms"]:.2f}',
        f'{q["wall_ms"]:.1f} / {q["median_ms"]:.1f} ({q["matches"]})',
        f'{g["req_per_s"]:,.0f}', f'{u["req_per_s"]:,.0f} ({u["errors"]} refused)',
        "-" if rss is None else f"{rss:.0f}",
        "-" if r.get("data_dir_bytes") is None else f'{r["data_dir_bytes"] / 1e6:.0f}',
        "-" if startup is None else f"{startup}",
        str(len(r["failures"])),
    ]

def full_sync(r):
    """The first full sync, and the median when the run repeated it (--full-syncs)."""
    if r.get("full_syncs", 1) > 1:
        return f'{r["full_sync_ms"]:.0f} / {r["full_sync_median_ms"]:.0f} (median of {r["full_syncs"]})'
    return f'{r["full_sync_ms"]:.0f}'

HEAD = ["server", "N", "1 upload PUT/s (first → last tenth)", "2 PROPFIND ms", "3 multiget ms",
        "full sync 2+3 ms (first / median)", "4 initial sync ms", "4 delta ms first / median", "5 query ms first / median (matches)",
        "6 GET/s", "7 If-Match PUT/s", "peak RSS 2+3 MB", "data dir MB", "startup filled ms", "failed checks"]

def table(rows):
    print("| " + " | ".join(HEAD) + " |")
    print("|" + "---|" * len(HEAD))
    for r in rows:
        print("| " + " | ".join(r) + " |")

def ratio_table(runs, kartei_label, scheme):
    k = runs.get((kartei_label, 1000))
    peers = [r for (label, n), r in runs.items() if n == 1000 and label.endswith(" " + scheme)
             and not label.startswith("kartei")]
    if k and peers:
        print()
        print(f"| at N = 1,000 | {kartei_label} | " + " | ".join(p["label"] for p in peers) + " | " +
              " | ".join(f'kartei ×faster than {p["label"].split()[0]}' for p in peers) + " |")
        print("|" + "---|" * (2 + 2 * len(peers)))
        def metric(name, f, rate):
            kv = f(k)
            vals = [f(p) for p in peers]
            ratios = [(kv / v if rate else v / kv) if v and kv else 0 for v in vals]
            fmt = (lambda x: f"{x:,.0f}/s") if rate else (lambda x: f"{x:,.1f} ms")
            print(f"| {name} | {fmt(kv)} | " + " | ".join(fmt(v) for v in vals) + " | " +
                  " | ".join(f"{x:,.1f}×" for x in ratios) + " |")
        metric("1 upload", lambda r: ph(r, "upload")["req_per_s"], True)
        metric("initial full sync (2+3)", lambda r: r["full_sync_ms"], False)
        if all(r.get("full_syncs", 1) > 1 for r in [k] + peers):
            metric("full sync, median of repeats", lambda r: r["full_sync_median_ms"], False)
        if all("full_sync_after_writes_ms" in r for r in [k] + peers):
            metric("full sync after phase 4's writes", lambda r: r["full_sync_after_writes_ms"], False)
        metric("4 initial sync-collection", lambda r: ph(r, "sync")["initial_ms"], False)
        metric("4 delta (median)", lambda r: ph(r, "sync")["delta_median_ms"], False)
        metric("5 query (median)", lambda r: ph(r, "query")["median_ms"], False)
        metric("6 GET", lambda r: ph(r, "get")["req_per_s"], True)
        metric("7 If-Match PUT", lambda r: ph(r, "update")["req_per_s"], True)


if __name__ == "__main__":
    runs, versus = {}, []
    for d in sys.argv[1:]:
        single, interleaved = load(d)
        runs.update(single)
        versus += interleaved
    if versus:
        versus_table(versus)
        if not runs:
            sys.exit(0)
        print()
    table([row(r) for _, r in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0]))])
    # Ratios at N = 1,000 against the peers (peer time / kartei time, or kartei rate / peer rate), each kartei
    # run against the peers run the same way: HTTPS (kartei self-signed) or plain HTTP (kartei off).
    for mode, scheme in (("self-signed", "https"), ("off", "http")):
        ratio_table(runs, f"kartei {mode}", scheme)
