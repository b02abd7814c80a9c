"""Results folder with an HTML report a person reads at a glance.

``write_report(out_dir, sweep=rows, bench=rows, layer_widths=...)`` draws (matplotlib):
accuracy vs pruning ratio per method; latency vs ratio per runtime; params / MACs / file
size of the original vs the pruned model; per-layer widths, original vs kept (a tapering
schedule shows at a glance). Next to each figure is the table behind it, in the HTML and
as CSV, with full precision.
"""
from __future__ import annotations

import html
import pathlib

from ._io import write_csv, write_json

__all__ = ["write_report", "markdown_table"]

# every file write_report may write (a second report into the folder removes the first's)
REPORT_FILES = ("index.html", "report_data.json", "accuracy_vs_ratio.png", "accuracy_vs_ratio.csv",
                "latency_vs_ratio.png", "latency_vs_ratio.csv", "sizes.png", "sizes.csv", "layer_widths.png",
                "layer_widths.csv", "layer_latency.png", "layer_latency.csv", "latency_rounds.csv")


def markdown_table(rows: list[dict], columns: list | None = None) -> str:
    """A Markdown table of `rows` (dicts). `columns` lists keys, or (key, header) or
    (key, header, format spec) tuples; by default every key met, floats to 3 decimals.
    Missing values are left blank."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    cols = [(c, c, None) if isinstance(c, str) else (c[0], c[1], c[2] if len(c) > 2 else None) for c in columns]

    def cell(v, spec):
        if v is None or v == "":
            return ""
        if spec is not None:
            return format(v, spec)
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(k), spec) for k, _, spec in cols) + " |" for r in rows]
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# How a column reads in the HTML: its header and a formatter (the CSV keeps full precision).
_COLUMNS = {
    "top1": ("top-1 (%)", lambda v: f"{100 * v:.2f}"),
    "top1_before_ft": ("top-1 before fine-tune (%)", lambda v: f"{100 * v:.2f}"),
    "p50_s": ("p50 (ms)", lambda v: _ms(v)),
    "p90_s": ("p90 (ms)", lambda v: _ms(v)),
    "ratio": ("ratio", lambda v: f"{v:.2f}"),
    "params": ("parameters", lambda v: f"{int(v):,}"),
    "macs": ("MACs", lambda v: f"{int(v):,}"),
    "size_bytes": ("file size", lambda v: _bytes(v)),
    "file_bytes": ("file size", lambda v: _bytes(v)),
    "noisy": ("noisy", lambda v: "yes: other load" if v else ""),
    "before": ("channels before", str),
    "after": ("channels kept", str),
}


def _ms(seconds: float) -> str:
    ms = 1e3 * float(seconds)
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def _bytes(n) -> str:
    n = float(n)
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _table(title: str, cols: list[str], rows: list[list], table_id: str, png: str | None = None) -> str:
    """Heading, then the figure (if any), then the table behind it, formatted to read
    (columns with no value in any row are left out)."""
    keep = [i for i in range(len(cols)) if any(r[i] not in (None, "") for r in rows)]
    cols, rows = [cols[i] for i in keep], [[r[i] for i in keep] for r in rows]
    head = "".join(f"<th>{html.escape(_COLUMNS.get(c, (c, None))[0])}</th>" for c in cols)

    def cell(c, v):
        if v is None or v == "":
            return ""
        fmt = _COLUMNS.get(c, (None, None))[1]
        try:
            return fmt(v) if fmt is not None else _fmt(v)
        except (TypeError, ValueError):
            return _fmt(v)

    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(c, v))}</td>" for c, v in zip(cols, r)) + "</tr>"
                   for r in rows)
    fig = f'<div class="fig"><img src="{png}" alt="{html.escape(title)}"></div>' if png else ""
    return (f'<section><h2>{html.escape(title)}</h2>{fig}<table id="{table_id}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></section>")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _csv(path: pathlib.Path, cols, rows) -> None:
    write_csv(path, cols, rows, _fmt)


_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_STYLES = ["-", "--", "-.", (0, (3, 1, 1, 1))]


def _line_plot(plt, path, series, xlabel: str, ylabel: str, title: str, dotted_label: str) -> None:
    """One line per (label, points, dotted points); dotted points share the line's colour.
    Each series has its own marker and dash, and is shifted by a hair along x, so lines
    that coincide (every method back at full accuracy after fine-tuning) all show."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    n = max(1, len(series))
    xs = sorted({p[0] for _, pts, dots in series for p in list(pts) + list(dots)})
    span = (xs[-1] - xs[0]) if len(xs) > 1 else 1.0
    for i, (label, pts, dotted) in enumerate(series):
        dx = (i - (n - 1) / 2) * 0.012 * span
        ax.plot([p[0] + dx for p in pts], [p[1] for p in pts], marker=_MARKERS[i % len(_MARKERS)],
                linestyle=_STYLES[i % len(_STYLES)], label=label)
        if dotted:
            ax.plot([p[0] + dx for p in dotted], [p[1] for p in dotted], marker=_MARKERS[i % len(_MARKERS)],
                    linestyle=":", alpha=0.6, markerfacecolor="none", color=ax.lines[-1].get_color(),
                    label=f"{label} ({dotted_label})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _before_after_bars(plt, path: pathlib.Path, names, before, after, labels, xlabel, ylabel: str, title: str,
                       width_per_bar: float = 0.25) -> None:
    """One bar per layer: the value before (grey) with the value after drawn over it."""
    fig, ax = plt.subplots(figsize=(max(6.4, width_per_bar * len(names)), 4.2))
    xs = range(len(names))
    ax.bar(xs, before, color="#cccccc", label=labels[0])
    ax.bar(xs, after, color="#2a7ab9", label=labels[1])
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=6 if len(names) > 20 else 8)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _latency_section(plt, out: pathlib.Path, lat: dict) -> list[str]:
    layers = sorted(lat.get("layers", []), key=lambda r: -r["before_s"])
    parts = []
    if layers:
        top = layers[:30]
        _before_after_bars(plt, out / "layer_latency.png", [r["module"] for r in top],
                           [1e3 * r["before_s"] for r in top], [1e3 * r["after_s"] for r in top],
                           ("unpruned", "pruned"), None, "predicted ms in the model",
                           f"Where the time goes ({lat.get('target', '')}), slowest {len(top)} layers")
        cols = ["module", "kind", "before_ms", "after_ms"]
        rows = [[r["module"], r["kind"], round(1e3 * r["before_s"], 4), round(1e3 * r["after_s"], 4)] for r in layers]
        _csv(out / "layer_latency.csv", cols, rows)
        parts.append(_table("Per-layer latency, unpruned vs pruned (predicted in the model)", cols, rows,
                            "layer_latency", "layer_latency.png"))
    cols = ["round", "goal_ms", "predicted_ms", "table_error", "measured_ms", "unpruned_predicted_ms",
            "unpruned_measured_ms", "predicted_share", "measured_share", "budget_ms"]
    nan = float("nan")
    rows = [[i + 1, round(1e3 * r["goal_s"], 4), round(1e3 * r["predicted_s"], 4), round(r.get("table_error", 1.0), 4),
             round(1e3 * r["measured_s"], 4), round(1e3 * r.get("unpruned_predicted_s", nan), 4),
             round(1e3 * r.get("unpruned_measured_s", nan), 4), round(r.get("predicted_ratio", nan), 4),
             round(r.get("measured_ratio", nan), 4), round(1e3 * r.get("budget_s", lat["budget_s"]), 4)]
            for i, r in enumerate(lat.get("rounds", []))]
    if rows:
        _csv(out / "latency_rounds.csv", cols, rows)
        parts.append(_table(f"Latency budget: predicted vs measured, each round's model timed in turns with the "
                            f"unpruned one (kept: round {lat.get('round', len(rows))}, unpruned "
                            f"{1e3 * lat['unpruned_measured_s']:.3f} ms); a round's prediction is the table's "
                            "times its error on the models measured in the rounds before, at the machine's speed "
                            "of the measurement before (the unpruned model's predicted against measured time is "
                            "how far that speed moved); a share is the pruned model's time over the unpruned "
                            "one's", cols, rows,
                            "latency_rounds"))
    return parts


def _check_rows(name: str, rows, keys: tuple, numeric: tuple) -> None:
    """Every row has `keys`, and numbers where `numeric` says: else a ValueError naming the row."""
    for i, r in enumerate(rows or []):
        missing = [k for k in keys if k not in r]
        if missing:
            raise ValueError(f"{name}[{i}]: missing {', '.join(missing)} (each row needs {', '.join(keys)})")
        for k in numeric:
            if r.get("method") == "unpruned" and k == "ratio":
                continue
            try:
                float(r[k])
            except (TypeError, ValueError):
                raise ValueError(f"{name}[{i}]: {k} must be a number, got {r[k]!r}"
                                 + (" (for ratio='auto', give the share of channels the prune removed)"
                                    if k == "ratio" else "")) from None


def write_report(out_dir, *, sweep: list[dict] | None = None, bench: list[dict] | None = None,
                 sizes: dict | None = None, layer_widths: dict | None = None, title: str = "pyprune report",
                 notes: list[str] | None = None, latency: dict | None = None) -> pathlib.Path:
    """Write ``index.html`` plus PNG figures and CSV tables into `out_dir`.

    sweep: rows with ``method``, ``ratio``, ``top1`` (and optionally ``top1_before_ft``);
        an ``unpruned`` row (ratio 0) is drawn as every method's starting point.
    bench: rows with ``runtime``, ``ratio``, ``p50_s``, optionally ``threads`` and ``batch`` (a line
        each; rows without ``batch`` are batch 1).
    sizes: {"original": {"params", "macs", "file_bytes"}, "pruned": {...}}.
    layer_widths: {layer: (channels before, channels after)}.
    latency: a latency-targeted prune's ``PruneResult.latency``: where the time goes per
        layer before/after (a bar chart of the slowest layers and the full table), and
        budget, predicted and measured latency per measure -> plan again round.
    """
    _check_rows("sweep", sweep, ("method", "ratio", "top1"), numeric=("ratio", "top1"))
    for i, r in enumerate(sweep or []):
        for k in ("top1", "top1_before_ft"):
            if k in r and not 0.0 <= float(r[k]) <= 1.0:  # (NaN fails too)
                raise ValueError(f"sweep[{i}]: {k} is a fraction in [0, 1], got {r[k]!r}"
                                 + (f" (for {r[k]}%, give {float(r[k]) / 100:g})" if 1 < float(r[k]) <= 100 else ""))
    _check_rows("bench", bench, ("runtime", "ratio", "p50_s"), numeric=("ratio", "p50_s"))
    if sizes:
        shared = [k for k in ("params", "macs", "file_bytes") if all(k in v for v in sizes.values())]
        if not shared:
            raise ValueError("sizes: the models share none of params, macs, file_bytes; give each at least one "
                             "of them, e.g. {'original': {'params': ...}, 'pruned': {'params': ...}}")
    plt = _plt()
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "report_data.json").is_file():  # an earlier report's: none of its figures may outlive it
        for name in REPORT_FILES:
            (out / name).unlink(missing_ok=True)
    parts = [f"<h1>{html.escape(title)}</h1>"] + [f"<p>{html.escape(n)}</p>" for n in (notes or [])]
    figures = []

    if sweep:
        base = [r for r in sweep if r.get("method") == "unpruned"]
        series = []
        for m in sorted({r["method"] for r in sweep} - {"unpruned"}):
            pts = [(0.0, 100 * base[0]["top1"])] if base else []
            pts += sorted((float(r["ratio"]), 100 * float(r["top1"])) for r in sweep if r["method"] == m)
            pre = sorted((float(r["ratio"]), 100 * float(r["top1_before_ft"])) for r in sweep
                         if r["method"] == m and "top1_before_ft" in r)
            series.append((m, pts, pre))
        _line_plot(plt, out / "accuracy_vs_ratio.png", series, "pruning ratio (fraction of channels removed)",
                   "top-1 accuracy (%)", "Accuracy vs pruning ratio", "before fine-tune")
        cols = ["method", "ratio", "top1", "top1_before_ft", "params", "macs"]
        rows = [[r.get(c, "") for c in cols] for r in sweep]
        _csv(out / "accuracy_vs_ratio.csv", cols, rows)
        figures.append(_table("Accuracy vs pruning ratio", cols, rows, "accuracy", "accuracy_vs_ratio.png"))

    if bench:
        series = []
        batches = {r.get("batch", 1) for r in bench}
        for rt, th, b in sorted({(r["runtime"], r.get("threads", ""), r.get("batch", 1)) for r in bench}, key=str):
            pts = sorted((float(r["ratio"]), 1e3 * float(r["p50_s"])) for r in bench
                         if r["runtime"] == rt and r.get("threads", "") == th and r.get("batch", 1) == b)
            series.append((f"{rt}" + (f", {th} thread(s)" if th else "") + (f", batch {b}" if len(batches) > 1 else ""),
                           pts, []))
        batch = f"batch {next(iter(batches))}" if len(batches) == 1 else "per batch"
        _line_plot(plt, out / "latency_vs_ratio.png", series, "pruning ratio", f"latency p50, {batch} (ms)",
                   "Latency vs pruning ratio", "")
        cols = ["runtime", "threads"] + (["batch"] if any("batch" in r for r in bench) else []) + [
            "ratio", "p50_s", "p90_s", "size_bytes", "noisy"]
        rows = [[r.get(c, "") for c in cols] for r in bench]
        _csv(out / "latency_vs_ratio.csv", cols, rows)
        figures.append(_table("Latency vs pruning ratio", cols, rows, "latency", "latency_vs_ratio.png"))
        if any(r.get("noisy") for r in bench):
            parts.append("<p class='warn'>Rows marked noisy ran while other load used more than a quarter of "
                         "the machine: read their latency as an upper bound.</p>")

    if sizes:
        names = list(sizes)
        metrics = [("params", "parameters"), ("macs", "MACs"), ("file_bytes", "file size (bytes)")]
        metrics = [m for m in metrics if all(m[0] in sizes[n] for n in names)]
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6))
        axes = axes if len(metrics) > 1 else [axes]
        for ax, (key, label) in zip(axes, metrics):
            vals = [sizes[n][key] for n in names]
            bars = ax.bar(names, vals, color=["#888888", "#2a7ab9", "#d9822b"][: len(names)])
            ax.set_title(label)
            for b, v in zip(bars, vals):
                share = f"{v / vals[0]:.0%}" if vals[0] else "-"  # (of the first model's)
                ax.text(b.get_x() + b.get_width() / 2, v, share, ha="center", va="bottom", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "sizes.png", dpi=110)
        plt.close(fig)
        cols = ["model"] + [m[0] for m in metrics]
        rows = [[n] + [sizes[n][m[0]] for m in metrics] for n in names]
        _csv(out / "sizes.csv", cols, rows)
        figures.append(_table("Original vs pruned", cols, rows, "sizes", "sizes.png"))

    if layer_widths:
        names = list(layer_widths)
        before = [layer_widths[n][0] for n in names]
        after = [layer_widths[n][1] for n in names]
        _before_after_bars(plt, out / "layer_widths.png", names, before, after, ("original", "kept"),
                           "layer (producing module, forward order)", "output channels",
                           "Per-layer width: original vs kept", width_per_bar=0.22)
        cols = ["layer", "before", "after"]
        rows = [[n, b, a] for n, b, a in zip(names, before, after)]
        _csv(out / "layer_widths.csv", cols, rows)
        figures.append(_table("Per-layer width", cols, rows, "widths", "layer_widths.png"))

    if latency:
        figures.extend(_latency_section(plt, out, latency))

    parts.extend(figures)
    style = ("body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:12px;margin-bottom:2em}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}"
             ".warn{color:#a15c00}")
    # After loading, the page notes how many figures drew and how many tables it holds
    # (a browser test reads them from the DOM).
    check = ("<script>window.addEventListener('load',function(){var i=document.images,n=0;"
             "for(var k=0;k<i.length;k++){if(i[k].complete&&i[k].naturalWidth>0)n++;}"
             "document.body.setAttribute('data-figures',i.length);document.body.setAttribute('data-figures-drawn',n);"
             "document.body.setAttribute('data-tables',document.getElementsByTagName('table').length);});</script>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}{check}</body></html>")
    index = out / "index.html"
    index.write_text(page)
    write_json(out / "report_data.json", {"sweep": sweep, "bench": bench, "sizes": sizes, "layer_widths": layer_widths,
                                          "latency": latency})
    return index
