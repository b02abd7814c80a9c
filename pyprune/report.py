"""Results folder with an HTML report a person reads at a glance.

``write_report(out_dir, sweep=rows, bench=rows, layer_widths=...)`` draws (matplotlib):
accuracy vs pruning ratio per method; latency vs ratio per runtime; params / MACs / file
size of the original vs the pruned model; per-layer widths, original vs kept (a tapering
schedule shows at a glance). Next to each figure is the table behind it, in the HTML and
as CSV, with full precision.
"""
from __future__ import annotations

import html
import json
import pathlib

__all__ = ["write_report", "markdown_table"]


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


def _table(title: str, cols: list[str], rows: list[list], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f'<h3>{html.escape(title)}</h3><table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _csv(path: pathlib.Path, cols, rows) -> None:
    path.write_text("\n".join([",".join(cols)] + [",".join(_fmt(v) for v in r) for r in rows]) + "\n")


def _line_plot(plt, path, series, xlabel: str, ylabel: str, title: str, dotted_label: str) -> None:
    """One line per (label, points, dotted points); dotted points share the line's colour."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, pts, dotted in series:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        if dotted:
            ax.plot([p[0] for p in dotted], [p[1] for p in dotted], marker=".", linestyle=":", alpha=0.6,
                    color=ax.lines[-1].get_color(), label=f"{label} ({dotted_label})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out_dir, *, sweep: list[dict] | None = None, bench: list[dict] | None = None,
                 sizes: dict | None = None, layer_widths: dict | None = None, title: str = "pyprune report",
                 notes: list[str] | None = None) -> pathlib.Path:
    """Write ``index.html`` plus PNG figures and CSV tables into `out_dir`.

    sweep: rows with ``method``, ``ratio``, ``top1`` (and optionally ``top1_before_ft``);
        an ``unpruned`` row (ratio 0) is drawn as every method's starting point.
    bench: rows with ``runtime``, ``ratio``, ``p50_s`` (batch 1 preferred), optionally ``threads``.
    sizes: {"original": {"params", "macs", "file_bytes"}, "pruned": {...}}.
    layer_widths: {layer: (channels before, channels after)}.
    """
    plt = _plt()
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
        figures.append(("accuracy_vs_ratio.png", _table("Accuracy vs pruning ratio", cols, rows, "accuracy")))

    if bench:
        series = []
        for rt, th in sorted({(r["runtime"], r.get("threads", "")) for r in bench}, key=str):
            pts = sorted((float(r["ratio"]), 1e3 * float(r["p50_s"])) for r in bench
                         if r["runtime"] == rt and r.get("threads", "") == th)
            series.append((f"{rt}" + (f", {th} thread(s)" if th else ""), pts, []))
        _line_plot(plt, out / "latency_vs_ratio.png", series, "pruning ratio", "latency p50, batch 1 (ms)",
                   "Latency vs pruning ratio", "")
        cols = ["runtime", "threads", "ratio", "p50_s", "p90_s", "size_bytes"]
        rows = [[r.get(c, "") for c in cols] for r in bench]
        _csv(out / "latency_vs_ratio.csv", cols, rows)
        figures.append(("latency_vs_ratio.png", _table("Latency vs pruning ratio", cols, rows, "latency")))

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
                ax.text(b.get_x() + b.get_width() / 2, v, f"{v / vals[0]:.0%}", ha="center", va="bottom", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "sizes.png", dpi=110)
        plt.close(fig)
        cols = ["model"] + [m[0] for m in metrics]
        rows = [[n] + [sizes[n][m[0]] for m in metrics] for n in names]
        _csv(out / "sizes.csv", cols, rows)
        figures.append(("sizes.png", _table("Original vs pruned", cols, rows, "sizes")))

    if layer_widths:
        names = list(layer_widths)
        before = [layer_widths[n][0] for n in names]
        after = [layer_widths[n][1] for n in names]
        fig, ax = plt.subplots(figsize=(max(6.4, 0.22 * len(names)), 4.2))
        xs = range(len(names))
        ax.bar(xs, before, color="#cccccc", label="original")
        ax.bar(xs, after, color="#2a7ab9", label="kept")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=90, fontsize=6)
        ax.set_ylabel("output channels")
        ax.set_title("Per-layer width: original vs kept")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "layer_widths.png", dpi=110)
        plt.close(fig)
        cols = ["layer", "before", "after"]
        rows = [[n, b, a] for n, b, a in zip(names, before, after)]
        _csv(out / "layer_widths.csv", cols, rows)
        figures.append(("layer_widths.png", _table("Per-layer width", cols, rows, "widths")))

    for png, table in figures:
        parts.append(f'<div class="fig"><img src="{png}" alt="{png}"></div>{table}')
    style = ("body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:12px;margin-bottom:2em}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"
    index = out / "index.html"
    index.write_text(page)
    (out / "report_data.json").write_text(json.dumps({"sweep": sweep, "bench": bench, "sizes": sizes,
                                                      "layer_widths": layer_widths}, indent=1, default=float))
    return index
