"""Checks a soak run (scripts/soak.sh) against its pass criteria and records it.

Usage: soak_report.py SOAK_CSV DURATION_S SEGMENT_S SWAP_EVERY_S

Pass criteria, after a warm-up of the first 10% of the segments (at least two):
  - zero errors in the whole run, warm-up included;
  - flat memory: the least-squares trend of resident memory over the run, extrapolated over
    the run, grows by at most 5% of the mean;
  - stable p99: for each client, the median p99 of the last third of the segments is at most
    1.5 times the median of the first third.
Writes docs/reliability-soak.svg and replaces the soak section of docs/reliability.md;
exits 1 when a criterion fails.
"""

import csv
import statistics
import sys
from pathlib import Path

CLIENTS = ("json", "grpc", "binary")


def trend_growth(xs, ys):
    """Growth of the least-squares line over the span of xs, relative to the mean of ys."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return slope * (xs[-1] - xs[0]) / my


def polyline(xs, ys, box, color, ymax):
    x0, y0, w, h = box
    xmax = max(xs) or 1
    points = " ".join(
        f"{x0 + w * x / xmax:.1f},{y0 + h - h * y / ymax:.1f}" for x, y in zip(xs, ys)
    )
    return f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>'


def panel(title, xs, series, box, unit):
    """One chart: series is [(label, ys, color)]."""
    x0, y0, w, h = box
    ymax = max(max(ys) for _, ys, _ in series) * 1.15 or 1
    out = [
        f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
        f'<text x="{x0}" y="{y0 - 6}" font-size="13">{title}</text>',
        f'<text x="{x0 - 4}" y="{y0 + 10}" font-size="10" text-anchor="end">{ymax:.3g}</text>',
        f'<text x="{x0 - 4}" y="{y0 + h}" font-size="10" text-anchor="end">0</text>',
        f'<text x="{x0 + w}" y="{y0 + h + 14}" font-size="10" text-anchor="end">{max(xs):.0f} s</text>',
        f'<text x="{x0 + 4}" y="{y0 + h - 4}" font-size="10" fill="#666">{unit}</text>',
    ]
    for i, (label, ys, color) in enumerate(series):
        out.append(polyline(xs, ys, box, color, ymax))
        out.append(
            f'<text x="{x0 + w - 4}" y="{y0 + 14 + 13 * i}" font-size="11" fill="{color}" '
            f'text-anchor="end">{label}</text>'
        )
    return out


def main():
    path, duration, segment, swap_every = sys.argv[1], *map(int, sys.argv[2:5])
    rows = list(csv.DictReader(open(path)))
    if len(rows) < 4:
        sys.exit(f"soak: only {len(rows)} segments recorded, need at least 4")
    num = lambda key: [float(r[key]) for r in rows]  # noqa: E731
    t, rss, fds, threads = num("elapsed_s"), num("rss_kb"), num("fds"), num("threads")
    warm = max(2, len(rows) // 10)
    errors = int(sum(num("errors")))
    requests = int(sum(num("requests")))
    growth = trend_growth(t[warm:], rss[warm:]) * 100
    # Resident memory's two parts (recorded since the columns were added): anonymous (heaps,
    # stacks) and file-backed (mapped code such as ONNX Runtime's library, paged in on use);
    # and the part of anonymous memory in mimalloc's arenas (the Rust heap).
    parts = [
        (name, num(key))
        for name, key in (
            ("anonymous", "rss_anon_kb"),
            ("file-backed", "rss_file_kb"),
            ("mimalloc arenas (Rust heap, part of anonymous)", "rss_anon_mimalloc_kb"),
        )
        if rows[0].get(key)
    ]
    p99 = {c: num(f"p99_ms_{c}") for c in CLIENTS}
    steady = {c: v[warm:] for c, v in p99.items()}
    third = max(1, len(steady["json"]) // 3)
    p99_ratio = {
        c: statistics.median(v[-third:]) / statistics.median(v[:third]) for c, v in steady.items()
    }
    swaps = int(rows[-1]["swaps"])
    hits, misses = int(rows[-1]["cache_hits"]), int(rows[-1]["cache_misses"])
    checks = [
        (f"errors: {errors} of {requests:,} requests", errors == 0),
        (f"resident memory trend after warm-up: {growth:+.1f}% over the run (limit +5%)", growth <= 5),
        *(
            (f"p99 {c}: last third / first third = {p99_ratio[c]:.2f} (limit 1.5)", p99_ratio[c] <= 1.5)
            for c in CLIENTS
        ),
    ]

    svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="760" height="560" font-family="sans-serif">']
    colors = {"anonymous": "#a6761d", "file-backed": "#666666", "mimalloc arenas (Rust heap, part of anonymous)": "#e6ab02"}
    svg += panel(
        "resident memory (kB)",
        t,
        [("RSS", rss, "#1b9e77"), *((name, v, colors[name]) for name, v in parts)],
        (70, 30, 660, 130),
        "kB",
    )
    svg += panel("open fds and threads", t, [("fds", fds, "#7570b3"), ("threads", threads, "#e7298a")], (70, 210, 660, 130), "count")
    svg += panel(
        "p99 per segment (ms)",
        t,
        [(c, p99[c], color) for c, color in zip(CLIENTS, ("#d95f02", "#1f78b4", "#66a61e"))],
        (70, 390, 660, 130),
        "ms",
    )
    svg.append("</svg>")
    Path("docs/reliability-soak.svg").write_text("\n".join(svg) + "\n")

    section = [
        "<!-- soak:begin (written by scripts/soak_report.py) -->",
        f"`make soak` (SOAK_DURATION={duration}, SOAK_SEGMENT={segment}, SOAK_SWAP_EVERY={swap_every}) on a 2-core",
        "shared machine: release server; three loadtest processes per segment (HTTP JSON c8 on a",
        "registry model whose `production` alias moves every "
        f"{swap_every} s, gRPC c8 on a batched repository model reloaded",
        "once per segment, HTTP binary c4 with 20000 distinct requests on a model with a 256 KiB",
        "response cache). Data: `.bench/soak/soak.csv`, one row per segment.",
        "",
        f"- {len(rows)} segments over {t[-1]:.0f} s, warm-up: the first {warm}; {requests:,} requests",
        f"- alias moves applied by the server: {swaps}; reloads: {len(rows)}; cache hits / misses: {hits:,} / {misses:,}",
        f"- resident memory: {rss[warm] / 1024:.1f} MiB after warm-up, {rss[-1] / 1024:.1f} MiB at the end, "
        f"min {min(rss[warm:]) / 1024:.1f}, max {max(rss[warm:]) / 1024:.1f}",
        *(
            f"  - {name}: {v[warm] / 1024:.1f} → {v[-1] / 1024:.1f} MiB, trend "
            f"{trend_growth(t[warm:], v[warm:]) * 100:+.1f}% of its own size, "
            f"{trend_growth(t[warm:], v[warm:]) * statistics.fmean(v[warm:]) / statistics.fmean(rss[warm:]) * 100:+.1f}% of resident memory"
            for name, v in parts
        ),
        *(
            [f"- glibc heap trims (`runtime.heap_trim_ms`): {rows[-1]['heap_trims']}"]
            if rows[-1].get("heap_trims")
            else []
        ),
        f"- open fds: {min(fds):.0f}–{max(fds):.0f}; threads: {min(threads):.0f}–{max(threads):.0f}",
        "- p99 per client (median of segments, max): "
        + ", ".join(f"{c} {statistics.median(p99[c]):.2f} ms / {max(p99[c]):.2f} ms" for c in CLIENTS),
        "",
        "| criterion | result |",
        "|---|---|",
        *(f"| {text} | {'pass' if ok else 'FAIL'} |" for text, ok in checks),
        "",
        "![soak](reliability-soak.svg)",
        "<!-- soak:end -->",
    ]
    doc = Path("docs/reliability.md")
    text = doc.read_text() if doc.exists() else "# Reliability\n\n## Soak\n\n<!-- soak:begin -->\n<!-- soak:end -->\n"
    head, rest = text.split("<!-- soak:begin", 1)
    tail = rest.split("<!-- soak:end -->", 1)[1]
    doc.write_text(head + "\n".join(section) + tail)
    print("\n".join(section))
    if not all(ok for _, ok in checks):
        sys.exit(1)


if __name__ == "__main__":
    main()
