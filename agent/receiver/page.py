"""The receiver's summary page: server-rendered, every value escaped, no script."""

from __future__ import annotations

import html
import time
from typing import Any

STYLE = (
    "<style>body{font:14px system-ui;margin:2em}table{border-collapse:collapse}"
    "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}"
    ".resolved{color:#080}.no-remedy,.remedy-failed{color:#b00}</style>"
)


def render_summary(
    healed: list[dict[str, Any]],
    more_healed: bool,
    rows: list[dict[str, Any]],
    more_rows: bool,
) -> str:
    """What tier 1 did per owner and pattern, then escalations by owner, pattern and
    status; each table bounded by its caller, with a note when it was cut."""
    parts = [
        "<!doctype html><meta charset=utf-8><title>logmend escalations</title>",
        STYLE,
        "<h1>logmend: escalations by owner and pattern</h1>",
    ]
    if healed:
        parts.append(
            "<h2>What tier 1 did on the hosts</h2><table><tr><th>owner</th><th>pack</th>"
            "<th>pattern</th><th>hosts</th><th>lines matched</th><th>incidents</th>"
            "<th>fixed on the host</th><th>fixes failed</th><th>escalated</th></tr>"
        )
        for s in healed:
            parts.append(
                f"<tr><td>{html.escape(s['owner'])}</td><td>{html.escape(s['pack'])}</td>"
                f"<td>{html.escape(s['pattern'])}</td><td>{s['hosts']}</td>"
                f"<td>{s['matches']}</td><td>{s['incidents']}</td>"
                f"<td class='resolved'>{s['resolved']}</td><td>{s['failed']}</td>"
                f"<td>{s['escalated']}</td></tr>"
            )
        parts.append("</table>")
        if more_healed:
            parts.append(f"<p>The first {len(healed)} shown; GET /v1/stats pages the rest.</p>")
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["owner"], []).append(row)
    if not groups:
        parts.append("<p>No escalations yet.</p>")
    for owner, items in groups.items():
        parts.append(
            f"<h2>{html.escape(owner)}</h2><table><tr><th>pack</th><th>pattern</th>"
            "<th>status</th><th>escalations</th><th>lines</th><th>hosts</th>"
            "<th>last seen</th></tr>"
        )
        for r in items:
            last = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["last"] or 0))
            parts.append(
                f"<tr><td>{html.escape(r['pack'])}</td><td>{html.escape(r['pattern'])}</td>"
                f"<td class='{html.escape(r['status'])}'>{html.escape(r['status'])}</td>"
                f"<td>{r['n']}</td><td>{r['lines']}</td><td>{r['hosts']}</td>"
                f"<td>{last} UTC</td></tr>"
            )
        parts.append("</table>")
    if more_rows:
        parts.append(
            f"<p>The {len(rows)} most recent groups shown; GET /v1/escalations pages the rest.</p>"
        )
    return "".join(parts)
