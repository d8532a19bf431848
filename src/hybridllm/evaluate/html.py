"""``evaluate --html``: one self-contained HTML file to send to a colleague (the plot inlined as a
PNG data URL, no script, no external asset)."""

from __future__ import annotations

import base64
import html
from typing import Any

from hybridllm.routing.knob import CA_POINTS, QD_POINTS

from .metrics import _key

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th:first-child,td:first-child{text-align:left}
.ci{color:#777;font-size:.75rem}.warn{background:#fff3cd;border:1px solid #e0c060;padding:.5rem 1rem}
img{max-width:100%}
"""


def _num(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _ci(ci: list[float] | None, digits: int = 3) -> str:
    return "" if not ci else f'<div class="ci">[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]</div>'


def _summary_rows(report: dict[str, Any]) -> str:
    ci = report.get("ci95") or {}
    rows = [("router", report["router"], True)]
    rows += [(n, report[n], False) for n in ("random", "oracle")]
    rows += [(n.replace("_", " "), b, False) for n, b in (report.get("baselines") or {}).items()]
    out = []
    for name, r, with_ci in rows:
        cells = [f"<td>{html.escape(name)}</td>", f"<td>{_num(r['apgr'])}{_ci(ci.get('apgr')) if with_ci else ''}</td>"]
        for ca in CA_POINTS:
            k = _key(ca)
            c = ci.get("quality_drop_at_cost_advantage", {}).get(k) if with_ci else None
            cells.append(f"<td>{_num(r['quality_drop_at_cost_advantage'][k], 2)}{_ci(c, 2)}</td>")
        for qd in QD_POINTS:
            k = _key(qd)
            c = ci.get("cost_advantage_at_quality_drop", {}).get(k) if with_ci else None
            cells.append(f"<td>{_num(r['cost_advantage_at_quality_drop'][k], 1)}{_ci(c, 1)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out)


def render_html(report: dict[str, Any], png: bytes, breakdown: dict[str, list[dict[str, Any]]], title: str) -> str:
    esc = html.escape
    head = "".join(f"<th>QD@CA{_key(ca)}%</th>" for ca in CA_POINTS) + "".join(
        f"<th>CA@QD≤{_key(qd)}%</th>" for qd in QD_POINTS
    )
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>{report['n']} queries; Q_small {report['Q_small']:.4f}, Q_large {report['Q_large']:.4f}. "
        "QD: quality drop versus always using the large model (%); CA: cost advantage, the share of "
        "queries answered by the small model (%). Grey: 95 % bootstrap interval.</p>",
    ]
    for w in report.get("warnings") or []:
        parts.append(f'<p class="warn" id="warning">{esc(w)}</p>')
    op = report.get("operating_point")
    if op is not None:
        r, p = op["realised"], op.get("promised") or {}
        ci_op = (report.get("ci95") or {}).get("operating_point") or {}
        parts.append(
            '<h2>Operating point</h2><table id="operating-point"><tr><th></th><th>cost advantage %</th>'
            "<th>quality drop %</th></tr>"
            f"<tr><td>promised by calibration ({esc(op['knob'])}, threshold {op['threshold']:.4f})</td>"
            f"<td>{_num(p.get('cost_advantage'), 1)}</td><td>{_num(p.get('quality_drop'), 2)}</td></tr>"
            "<tr><td>realised on this table</td>"
            f"<td>{r['cost_advantage']:.1f}{_ci(ci_op.get('cost_advantage'), 1)}</td>"
            f"<td>{r['quality_drop']:.2f}{_ci(ci_op.get('quality_drop'), 2)}</td></tr></table>"
        )
    parts.append(
        f'<h2>Cost and quality</h2><img alt="quality drop versus cost advantage" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    )
    parts.append(f'<table id="summary"><tr><th>method</th><th>APGR</th>{head}</tr>\n{_summary_rows(report)}</table>')
    if breakdown:
        parts.append("<h2>By meta field</h2>")
        for field_name, entries in breakdown.items():
            with_op = any("operating_point" in e for e in entries)
            parts.append(
                f'<h3>{esc(field_name)}</h3><table class="breakdown"><tr><th>value</th><th>n</th><th>Q_small</th>'
                "<th>Q_large</th><th>APGR</th><th>CA@QD≤1%</th>"
                + ("<th>at operating point: CA %</th><th>QD %</th>" if with_op else "")
                + "</tr>"
            )
            for e in entries:
                row = (
                    f"<tr><td>{esc(e['value'])}</td><td>{e['n']}</td><td>{e['Q_small']:.3f}</td>"
                    f"<td>{e['Q_large']:.3f}</td><td>{_num(e['apgr'])}</td>"
                    f"<td>{e['cost_advantage_at_quality_drop_1']:.1f}</td>"
                )
                if with_op:
                    o = e["operating_point"]
                    row += f"<td>{o['cost_advantage']:.1f}</td><td>{o['quality_drop']:.2f}</td>"
                parts.append(row + "</tr>")
            parts.append("</table>")
    method = (report.get("ci95") or {}).get("method")
    if method:
        parts.append(f"<p class=ci>Intervals: {esc(method)}. Made by hybridllm.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
