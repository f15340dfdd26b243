"""The report's HTML: one page, no script, styles inline, everything from the archive escaped.

The page's numbers carry ``id``s (``count-ok``, ``count-error``...) and its parts ``class``es
(``error-group``, ``gallery-item``, ``night``), so a test or a script can read them back.
"""

from __future__ import annotations

import html
import time

# Nothing may load: no script, no font, no image but data: URIs, no request at all.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em }
h1 { font-size: 1.6em } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd }
table { border-collapse: collapse; margin: .5em 0 } td, th { padding: .25em .7em; border-bottom: 1px solid #eee;
text-align: left; vertical-align: top } td.n { text-align: right; font-variant-numeric: tabular-nums }
.big { display: flex; gap: 1.5em } .big div { background: #f5f5f5; padding: .6em 1.2em; border-radius: 6px }
.big b { display: block; font-size: 1.8em } .ok b { color: #2a7a3b } .error b { color: #b3261e }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 1.2em }
.pair { display: flex; gap: 4px } .pair img, .pair span { width: 160px; height: auto; border: 1px solid #ccc }
.gallery-item { margin: 0 }
.gallery-item figcaption { font-size: 12px; word-break: break-all } code { font-size: 12px; word-break: break-all }
.charts { display: flex; flex-wrap: wrap; gap: 1em } .charts svg { max-width: 520px; height: auto }
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def page(title: str, sections: list[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{esc(title)}</h1><p>written {esc(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))}</p>"
            + "".join(sections) + "</body></html>\n")


def key_values(title: str, items: list[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in items if v not in (None, ""))
    return f"<h2>{esc(title)}</h2><table>{rows}</table>"


def counts(ok: int, errors: int, skipped: int) -> str:
    return ('<h2>Counts</h2><div class="big">'
            f'<div class="ok"><b id="count-ok">{ok}</b>restored</div>'
            f'<div class="error"><b id="count-error">{errors}</b>error rows</div>'
            f'<div><b id="count-skipped">{skipped}</b>files skipped (not images)</div></div>')


def throughput(summary: dict, stages: dict[str, float], chart: str | None) -> str:
    busy = sum(stages.values()) or 1.0
    rows = "".join(f'<tr><td>{esc(k)}</td><td class="n">{v:.1f} s</td><td class="n">{100 * v / busy:.0f} %</td></tr>'
                   for k, v in stages.items())
    wall, ips, mps = summary.get("wall_s"), summary.get("images_per_s"), summary.get("megapixels_per_s")
    head = (f"<p>wall time <b>{wall or 0:.1f} s</b>: <b>{ips or 0:.2f}</b> images/s, <b>{mps or 0:.2f}</b> MP/s "
            f"({summary.get('megapixels', 0):.1f} MP restored)</p>")
    return (f"<h2>Throughput</h2>{head}<p>Busy seconds of each stage, summed over the workers:</p>"
            f"<table><tr><th>stage</th><th>seconds</th><th>share</th></tr>{rows}</table>"
            + (f'<div class="charts">{chart}</div>' if chart else ""))


def errors(groups: list[tuple[str, int, list[str]]]) -> str:
    if not groups:
        return '<h2>Errors</h2><p id="no-errors">No error rows.</p>'
    rows = "".join(f'<tr class="error-group"><td class="n count">{n}</td><td class="reason">{esc(reason)}</td>'
                   f'<td>{"<br>".join(f"<code>{esc(p)}</code>" for p in paths)}{" …" if n > len(paths) else ""}</td></tr>'
                   for reason, n, paths in groups)
    return ("<h2>Errors, by reason</h2><table><tr><th>rows</th><th>reason</th><th>first files</th></tr>"
            f"{rows}</table>")


def damage(charts: list[str], jpeg_qualities: list[float]) -> str:
    q = (f"<p>JPEG damage was found in {len(jpeg_qualities)} images, quality {min(jpeg_qualities):.0f} to "
         f"{max(jpeg_qualities):.0f} (median {sorted(jpeg_qualities)[len(jpeg_qualities) // 2]:.0f}).</p>"
         if jpeg_qualities else "")
    body = "".join(c for c in charts if c)
    return (f"<h2>What was found, per image</h2>{q}"
            + (f'<div class="charts">{body}</div>' if body else "<p>No image was restored.</p>"))


def gallery(items: list[dict]) -> str:
    if not items:
        return ""
    figures = []
    for item in items:
        row = item["row"]
        found = ", ".join(x for x in (
            row.get("damage"),
            f"JPEG quality {row['jpeg_quality']:.0f}" if row.get("jpeg_quality") is not None else "",
            f"σ {row['noise_sigma']:.1f}" if row.get("noise_sigma") is not None else "") if x)
        before = (f'<img alt="before" src="{item["before"]}">' if item["before"]
                  else '<span class="missing">source no longer readable</span>')
        figures.append(f'<figure class="gallery-item"><div class="pair">{before}<img alt="after" src="{item["after"]}"></div>'
                       f"<figcaption><code>{esc(item['path'])}</code><br>{esc(found)}</figcaption></figure>")
    return ("<h2>Before and after</h2><p>The same central crop of the source (left) and the restored image "
            "(right): the most damaged images of each kind found, the noisiest, then a few at random.</p>"
            f'<div class="gallery">{"".join(figures)}</div>')


def nights(rows: list[dict], chart: str | None) -> str:
    body = "".join(
        f'<tr class="night"><td><a href="{esc(n["run_id"])}.html">{esc(n["run_id"])}</a></td>'
        f'<td class="n">{n.get("rows", 0)}</td><td class="n">{n.get("errors", 0)}</td>'
        f'<td class="n">{n.get("inputs_restored", 0)}</td><td class="n">{n.get("inputs_listed", 0)}</td>'
        f'<td class="n">{n.get("wall_s", 0.0) / 60:.1f}</td><td>{esc(n.get("committed_at", ""))}</td></tr>'
        for n in rows)
    return ("<h2>Nights</h2><table><tr><th>run</th><th>rows</th><th>errors</th><th>new or changed inputs</th>"
            f"<th>inputs listed</th><th>minutes</th><th>committed</th></tr>{body}</table>"
            + (f'<div class="charts">{chart}</div>' if chart else ""))
