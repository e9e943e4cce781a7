#!/usr/bin/env python3
"""Report of a soak run (benches/soak.sh): errors, p99 per minute, RSS after warm-up against a stated
bound, and an SVG of RSS over time. Runs on a finished run's folder, so a report can be redone:

    python3 benches/soak_report.py OUT_DIR [WARMUP_SECONDS] [MODEL_SWAPS]

The RSS bound ("flat"): after warm-up, every minute's median RSS stays within 25% of the median over
the whole post-warm-up run, and the least-squares trend over the second half of the run is at most
+1% of that median per minute. A leak of a few KiB per request fails the trend (millions of requests
per minute); the allocator's sawtooth and a model swap's transient second copy do not.
The p99 figure per minute is the median and the maximum of the per-second p99s.
Exit status 1 when there were errors or the RSS bound was not met.
"""
import json
import os
import statistics
import sys


def trend_per_minute(points):
    """Least-squares slope of (seconds, value) points, per minute."""
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 60 * sum((t - mt) * (v - mv) for t, v in points) / den if den else 0.0


def rss_svg(rss, warmup, path):
    w, h, p = 720, 300, 50
    tmax = max(t for t, _ in rss) or 1
    kmax = max(kb for _, kb in rss) * 1.1
    x = lambda t: p + (w - 2 * p) * t / tmax
    y = lambda kb: h - p - (h - 2 * p) * kb / kmax
    pts = " ".join(f"{x(t):.1f},{y(kb):.1f}" for t, kb in rss)
    grid = "".join(
        f'<line x1="{p}" x2="{w - p}" y1="{y(kmax * f):.1f}" y2="{y(kmax * f):.1f}" stroke="#ddd"/>'
        f'<text x="{p - 5}" y="{y(kmax * f) + 4:.1f}" font-size="11" text-anchor="end">{kmax * f / 1024:.0f}</text>'
        for f in (0, 0.25, 0.5, 0.75, 1.0))
    ticks = "".join(
        f'<text x="{x(s):.1f}" y="{h - p + 16}" font-size="11" text-anchor="middle">{s // 60}</text>'
        for s in range(0, tmax + 1, 60))
    open(path, "w").write(f'''<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif">
<rect width="{w}" height="{h}" fill="white"/>{grid}{ticks}
<line x1="{x(warmup):.1f}" x2="{x(warmup):.1f}" y1="{p}" y2="{h - p}" stroke="#f90" stroke-dasharray="4"/>
<polyline points="{pts}" fill="none" stroke="#36c" stroke-width="1.5"/>
<text x="{w / 2}" y="20" font-size="13" text-anchor="middle">lambdarec serve RSS (MiB) during the soak; warm-up ends at the dashed line</text>
<text x="{w / 2}" y="{h - 12}" font-size="11" text-anchor="middle">minutes</text>
</svg>''')


def main():
    out = sys.argv[1]
    warmup = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    swaps = sys.argv[3] if len(sys.argv) > 3 else "?"
    r = json.load(open(os.path.join(out, "soak.json")))
    print(f"soak: {r['requests']} Recommend calls, {r['throughput_rps']:.0f}/s, p50 {r['p50_ms']:.2f} ms, "
          f"p99 {r['p99_ms']:.2f} ms, p99.9 {r['p999_ms']:.2f} ms, errors {r['errors_total']} {r['errors']}; "
          f"{swaps} model swaps")
    minutes = {}
    for t in r["timeline"]:
        minutes.setdefault(t["second"] // 60, []).append(t)
    print("p99 per minute (median and maximum of the per-second p99s):")
    for m, ts in sorted(minutes.items()):
        if len(ts) < 30:
            continue  # the tail second(s) after the last full minute
        p99s = [t["p99_ms"] for t in ts]
        print(f"  minute {m + 1:2}: {sum(t['requests'] for t in ts):8} calls, p99 median "
              f"{statistics.median(p99s):6.2f} ms, max {max(p99s):7.2f} ms, "
              f"seconds over 20 ms: {sum(p > 20 for p in p99s)}")

    rss = []
    for line in open(os.path.join(out, "rss.csv")):
        t, kb = (line.strip().split(",") + [""])[:2]  # seconds, KiB[, load average]
        if t.isdigit() and kb.isdigit():
            rss.append((int(t), int(kb)))
    after = [(t, kb / 1024) for t, kb in rss if t >= warmup]
    overall = statistics.median(v for _, v in after)
    per_minute = {}
    for t, v in after:
        per_minute.setdefault(t // 60, []).append(v)
    medians = {m: statistics.median(vs) for m, vs in per_minute.items() if len(vs) >= 30}
    worst = max(abs(v - overall) / overall for v in medians.values())
    half = after[len(after) // 2:]
    slope = trend_per_minute(half)
    flat = worst <= 0.25 and slope <= 0.01 * overall
    print(f"RSS after {warmup} s warm-up: median {overall:.0f} MiB, min {min(v for _, v in after):.0f}, "
          f"max {max(v for _, v in after):.0f}; per-minute medians "
          + " ".join(f"{medians[m]:.0f}" for m in sorted(medians))
          + f" MiB (furthest {100 * worst:.0f}% from the median; bound 25%); trend over the second half "
          f"{slope:+.2f} MiB/min ({100 * slope / overall:+.2f}%/min; bound +1%/min); trend over the whole "
          f"post-warm-up run {trend_per_minute(after):+.2f} MiB/min: {'FLAT' if flat else 'NOT FLAT'}")
    rss_svg(rss, warmup, os.path.join(out, "soak-rss.svg"))
    print(f"wrote {os.path.join(out, 'soak-rss.svg')} and {os.path.join(out, 'soak-latency.svg')}")
    sys.exit(0 if flat and r["errors_total"] == 0 else 1)


if __name__ == "__main__":
    main()
