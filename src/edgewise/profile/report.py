"""Search reports: report.json (everything measured) and a self-contained report.html with plots."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

from edgewise.profile.fidelity import label


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _plots(report: dict[str, Any]) -> dict[str, str]:
    """PNG plots as base64 strings; empty when matplotlib is not installed (device installs lack it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    rows = [c for c in report["candidates"] if c["status"] == "ok" and "score" in c["metrics"]]
    chosen = (report.get("chosen") or {}).get("id")
    colors = {"fp32": "#4C72B0", "int8": "#DD8452", "mixed": "#8172B3", "int4": "#55A868"}
    out: dict[str, str] = {}

    def save(fig: Any, key: str) -> None:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        out[key] = base64.b64encode(buf.getvalue()).decode()

    for key, xkey, xlabel in (("size", "size_bytes", "model size (KB)"),
                              ("latency", "latency_p50_ms", "latency p50 (ms)")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for c in rows:
            m = c["metrics"]
            x = m[xkey] / 1024 if xkey == "size_bytes" else m[xkey]
            ax.scatter(x, m["score"] * 100, color=colors.get(c["precision"], "grey"),
                       marker="*" if c["id"] == chosen else ("s" if c["id"] == "baseline-fp32" else "o"),
                       s=180 if c["id"] == chosen else 40, edgecolors="black" if c["pareto"] else "none", zorder=3)
        front = sorted((c for c in rows if c["pareto"]),
                       key=lambda c: c["metrics"][xkey])
        if front:
            xs = [c["metrics"][xkey] / (1024 if xkey == "size_bytes" else 1) for c in front]
            ys = [max(c2["metrics"]["score"] for c2 in front if c2["metrics"][xkey] <= c["metrics"][xkey]) * 100
                  for c in front]
            ax.step(xs, ys, where="post", color="black", lw=0.8, alpha=0.6, label="Pareto front")
        for p, col in colors.items():
            ax.scatter([], [], color=col, label=p)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{label(report['accuracy_kind'])} (%)")
        ax.set_title(f"{report['target']['name']}: accuracy vs {key} (star = chosen, square = start)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        save(fig, key)
    sens = report.get("sensitivity") or {}
    if sens:
        names = list(sens)[:30]
        fig, ax = plt.subplots(figsize=(6.4, max(2.5, 0.28 * len(names) + 1)))
        ax.barh(range(len(names)), [sens[n] for n in names], color="#C44E52")
        ax.set_yticks(range(len(names)), [n[-40:] for n in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("relative output error with only this layer in int8")
        ax.set_title("per-layer int8 sensitivity")
        ax.grid(axis="x", alpha=0.3)
        save(fig, "sensitivity")
    return out


def render_html(report: dict[str, Any]) -> str:
    plots = _plots(report)
    e = html.escape
    chosen = report.get("chosen")
    final = report.get("final") or {}
    rows = []
    for c in report["candidates"]:
        m = c["metrics"]
        lat = m.get("latency_p50_ms")
        status = "rejected: " + c["reason"] if c["status"] != "ok" else ("; ".join(c["violations"]) or "fits")
        cls = "chosen" if chosen and c["id"] == chosen["id"] else ("bad" if c["status"] != "ok" or c["violations"] else "")
        score = m.get("score")
        drop = m.get("accuracy_drop_points")
        drop_s = "-" if drop is None else f"{drop:+.2f}"
        rows.append(
            f"<tr class='{cls}'><td>{e(c['id'])}</td><td>{e(c['precision'])}</td><td>{e(c['description'])}</td>"
            f"<td>{'-' if score is None else f'{score * 100:.2f}'}</td>"
            f"<td>{drop_s}</td>"
            f"<td>{_fmt_bytes(m.get('size_bytes'))}</td><td>{'-' if lat is None else f'{lat:.3f}'}</td>"
            f"<td>{_fmt_bytes(m.get('peak_memory_bytes'))}</td><td>{'yes' if c['pareto'] else ''}</td>"
            f"<td>{e(status)}</td></tr>")
    imgs = "".join(f"<img alt='{k}' src='data:image/png;base64,{v}'>" for k, v in plots.items())
    if not plots:
        imgs = "<p><em>plots need matplotlib (pip install 'edgewise[train]')</em></p>"
    summary = (f"<p class='ok'><b>Chosen:</b> {e(report['why'])}</p>" if chosen
               else f"<p class='bad'><b>Nothing fits:</b> {e(report['why'])}</p>")
    final_rows = ""
    if final:
        def pair(key: str, fmt: Any) -> str:
            return (f"<tr><td>{key}</td><td>{fmt(final.get('baseline_' + key))}</td>"
                    f"<td>{fmt(final.get(key))}</td></tr>")
        pct = lambda v: "-" if v is None else f"{v * 100:.2f}%"  # noqa: E731
        ms = lambda v: "-" if v is None else f"{v:.3f} ms"  # noqa: E731
        final_rows = ("<h2>Starting model vs chosen, test split</h2><table><tr><th></th><th>start (fp32)</th>"
                      "<th>chosen</th></tr>" + pair("accuracy", pct) + pair("size_bytes", _fmt_bytes)
                      + pair("latency_p50_ms", ms) + pair("peak_memory_bytes", _fmt_bytes) + "</table>")
    notes = "".join(f"<li>{e(n)}</li>" for n in report.get("notes", []))
    excl = "".join(f"<li><code>{e(k)}</code>: {e(v)}</li>" for k, v in (report.get("exclusions") or {}).items())
    t = report["target"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>edgewise report: {e(report['model'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}}tr.chosen{{background:#e3f6e3;font-weight:bold}}
tr.bad td{{color:#777}}.ok{{color:#16621a}}.bad{{color:#9a1c1c}}img{{max-width:49%;margin:4px}}</style></head><body>
<h1>edgewise optimize: {e(report['model'])} for {e(t['name'])}</h1>
<p>{e(t['description'])} &mdash; RAM {_fmt_bytes(t['ram_bytes'])}, flash {_fmt_bytes(t['flash_bytes'])},
latency budget {t['latency_budget_ms']} ms, precisions {', '.join(t['precisions'])}, objective: {e(t['objective'])}.
Tolerance: {report['max_accuracy_drop']} points ({e(label(report['accuracy_kind']))}, validation split).</p>
{summary}{final_rows}<h2>Plots</h2>{imgs}
<h2>Candidates</h2><table><tr><th>id</th><th>precision</th><th>recipe</th><th>score %</th><th>drop (pts)</th>
<th>size</th><th>p50 ms</th><th>peak mem</th><th>Pareto</th><th>verdict</th></tr>{''.join(rows)}</table>
<h2>Layers kept in float automatically</h2><ul>{excl or '<li>none</li>'}</ul>
<h2>Notes</h2><ul>{notes or '<li>none</li>'}</ul>
<p><small>Latency: batch 1, {e(str(t.get('threads') or 'all'))} thread(s), interleaved runs on the machine that ran the search;
peak memory: RSS high-water mark of a fresh process that loads and runs the model (ORT runtime included).
Energy is an estimate: MACs x {t['energy_pj_per_mac']} pJ/MAC.</small></p></body></html>"""


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str)
