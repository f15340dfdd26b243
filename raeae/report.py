"""A self-contained HTML report of what a restore or nightly run did, for the person who looks the
next morning: did it work, what went wrong and for which files, does the result look right.

One file that opens anywhere, offline: charts are matplotlib SVG inlined in the page, thumbnails are
PNG ``data:`` URIs, there is no script, and a Content-Security-Policy forbids loading anything at all,
so nothing from the archive can run or call out. Every file name and error text is escaped.

It scales with the run: the rows' small columns are read in full (no image column), the gallery
holds a bounded sample (the images the model found noisiest or most damaged, plus a few at random),
and only those rows' images are read, one Parquet file at a time.

* ``raeae restore`` writes ``OUTPUT/_report.html``;
* ``raeae nightly`` writes ``OUTPUT/_reports/<run-id>.html`` and ``OUTPUT/_reports/index.html`` (the nights);
* ``raeae report OUTPUT`` writes them again from the output alone.

A report is written after its run has committed; one that fails is a line on stderr, never a failed run.
"""

from __future__ import annotations

import base64
import io
import json
import posixpath
import re
import sys
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raeae.storage import StorageConfig, StorageError, explain, read_bytes, resolve, write_bytes

REPORT_FILE = "_report.html"
REPORTS_DIR = "_reports"
# The gallery: the most damaged rows (of each kind found, then by the noise their model was told), and a
# few at random (seeded: a report written again shows the same ones), each as side-by-side crops of at
# most CROP pixels square.
GALLERY_WORST, GALLERY_RANDOM, CROP = 6, 4, 192
FIRST_PATHS = 5  # paths listed under each error reason
SMALL_COLUMNS = ["path", "status", "error", "width", "height", "bits", "model_id", "noise_sigma", "damage",
                 "jpeg_quality", "impulse_share", "decode_s", "restore_s", "forward_s", "encode_s"]


@dataclass(frozen=True)
class ReportConfig:
    """Write the report of a restore or nightly output again, from the output alone."""

    output: str = field(default="", metadata={"help": "a `raeae restore` or `raeae nightly` output (local, s3://, "
                                                      "gs://...): its report(s) are written again beside it"})
    storage: StorageConfig = StorageConfig()


# --- reading a run's rows -------------------------------------------------------------------------

def read_small(fs, files: list[str]) -> pa.Table:
    """The rows of ``files`` without their images (a column added since a file was written: nulls)."""
    from raeae.contract import SCHEMA

    tables = [pq.read_table(f, filesystem=fs, columns=SMALL_COLUMNS, schema=SCHEMA) for f in files]
    return pa.concat_tables(tables) if tables else pa.schema([SCHEMA.field(c) for c in SMALL_COLUMNS]).empty_table()


def read_images(fs, files: list[str], paths: set[str]) -> dict[str, bytes]:
    """The restored PNG of each of ``paths``, one Parquet file at a time (never every image at once)."""
    from raeae.contract import SCHEMA

    found: dict[str, bytes] = {}
    for f in files:
        t = pq.read_table(f, filesystem=fs, columns=["path", "image"], schema=SCHEMA,
                          filters=pc.field("path").isin(sorted(paths)))
        for path, image in zip(t["path"].to_pylist(), t["image"].to_pylist()):
            if image is not None:
                found[path] = image
    return found


# --- what the rows say ------------------------------------------------------------------------------

def error_groups(rows: pa.Table) -> list[tuple[str, int, list[str]]]:
    """(reason, count, first paths) per kind of error, most frequent first. A reason is the error
    text with its numbers and quoted bits made generic, so 'truncated PNG (1234 bytes)' and '(99 bytes)'
    are one reason."""
    groups: dict[str, list[str]] = {}
    for path, error in zip(rows["path"].to_pylist(), rows["error"].to_pylist()):
        if error is not None:
            reason = re.sub(r"\d[\d,.]*", "N", re.sub(r"b?'[^']*'|\"[^\"]*\"", "…", error))
            groups.setdefault(reason, []).append(path)
    return sorted(((r, len(p), p[:FIRST_PATHS]) for r, p in groups.items()), key=lambda g: -g[1])


def gallery_paths(rows: pa.Table, worst: int = GALLERY_WORST, random: int = GALLERY_RANDOM) -> list[str]:
    """The rows the gallery shows: the most damaged ok row of each kind of damage found (most impulses,
    lowest JPEG quality, most noise), then the rest of the ``worst`` by the noise their model was told,
    then ``random`` more of the ok rows, seeded."""
    ok = rows.filter(pc.equal(rows["status"], "ok"))
    paths = ok["path"].to_pylist()

    def column(name: str, missing: float) -> np.ndarray:
        return np.nan_to_num(ok[name].to_numpy(zero_copy_only=False).astype(float), nan=missing)

    sigma, quality, share = column("noise_sigma", -1.0), column("jpeg_quality", 101.0), column("impulse_share", -1.0)
    kinds = np.array([d or "" for d in ok["damage"].to_pylist()], dtype=object)
    chosen: list[str] = []
    for kind, severity in (("impulse", share), ("jpeg", -quality), ("noise", sigma)):
        members = np.flatnonzero(kinds == kind)
        if len(members):
            chosen.append(paths[members[np.argmax(severity[members])]])
    for i in np.argsort(-sigma, kind="stable"):
        if len(chosen) >= worst:
            break
        if paths[i] not in chosen:
            chosen.append(paths[i])
    rest = [p for p in paths if p not in set(chosen)]
    rng = np.random.default_rng(0)
    chosen += [rest[i] for i in sorted(rng.choice(len(rest), size=min(random, len(rest)), replace=False))]
    return chosen


def stage_seconds(rows: pa.Table) -> dict[str, float]:
    """Busy seconds of each stage over all rows (the model's forward passes are part of restore)."""
    total = {c: float(np.nansum(rows[c].to_numpy(zero_copy_only=False).astype(float))) for c in
             ("decode_s", "restore_s", "forward_s", "encode_s")}
    return {"decode": total["decode_s"], "restore (model)": total["forward_s"],
            "restore (tiling, damage, stitching)": total["restore_s"] - total["forward_s"], "encode": total["encode_s"]}


# --- charts: matplotlib, rendered to SVG text ------------------------------------------------------

def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    # no metadata block: its RDF namespaces are URLs, and a date would make every report differ
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Creator": None, "Date": None, "Format": None,
                                                                   "Type": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # inline: no XML prolog or DOCTYPE inside the HTML


def _figure(width: float = 5.0, height: float = 2.4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # text as text, not paths (smaller, selectable); no per-render random ids, so a report is reproducible
    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "raeae", "font.size": 9})
    return plt.subplots(figsize=(width, height))


def sigma_chart(rows: pa.Table) -> str | None:
    sigma = rows["noise_sigma"].to_numpy(zero_copy_only=False).astype(float)
    sigma = sigma[np.isfinite(sigma)]
    if not len(sigma):
        return None
    fig, ax = _figure()
    ax.hist(sigma, bins=min(40, max(5, len(sigma) // 5)), color="#4c72b0")
    ax.set_xlabel("noise σ the model was told (0-255)")
    ax.set_ylabel("images")
    return _svg(fig)


def bar_chart(counts: dict[str, float], xlabel: str, color: str = "#55a868") -> str | None:
    if not counts:
        return None
    fig, ax = _figure(5.0, 0.5 + 0.35 * len(counts))
    ax.barh(list(counts)[::-1], list(counts.values())[::-1], color=color)
    ax.set_xlabel(xlabel)
    return _svg(fig)


def nights_chart(nights: list[dict]) -> str | None:
    if not nights:
        return None
    fig, ax = _figure(6.0, 2.6)
    x = np.arange(len(nights))
    ax.bar(x, [n.get("ok", 0) for n in nights], color="#55a868", label="ok")
    ax.bar(x, [n.get("errors", 0) for n in nights], bottom=[n.get("ok", 0) for n in nights], color="#c44e52",
           label="errors")
    ax.set_xticks(x, [n["run_id"] for n in nights], rotation=30, ha="right")
    ax.set_ylabel("rows")
    minutes = ax.twinx()
    minutes.plot(x, [n.get("wall_s", 0.0) / 60 for n in nights], "k.-", label="minutes")
    minutes.set_ylabel("minutes")
    minutes.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=7)
    return _svg(fig)


# --- the gallery ------------------------------------------------------------------------------------

def _thumbnail(image: np.ndarray) -> str:
    from raeae.images import encode_png

    return "data:image/png;base64," + base64.b64encode(encode_png(image, compress_level=6)).decode()


def side_by_side(before: np.ndarray | None, after: np.ndarray) -> tuple[str | None, str]:
    """The same central crop (at most :data:`CROP` square) of the source and the restored image."""
    h, w = after.shape[:2]
    y, x = max(0, (h - CROP) // 2), max(0, (w - CROP) // 2)
    crop = (slice(y, y + CROP), slice(x, x + CROP))
    same = before is not None and before.shape[:2] == after.shape[:2]
    return (_thumbnail(before[crop]) if same else None), _thumbnail(after[crop])


def gallery(fs, files: list[str], rows: pa.Table, storage: StorageConfig) -> list[dict]:
    """The gallery's entries: path, what was found, and before/after crops (before: None when the
    source can no longer be read)."""
    from raeae.images import decode

    paths = gallery_paths(rows)
    restored = read_images(fs, files, set(paths))
    by_path = {r["path"]: r for r in rows.filter(pc.is_in(rows["path"], pa.array(paths))).to_pylist()}
    out = []
    for path in paths:
        if path not in restored:
            continue
        after = decode(restored[path])[0]
        try:
            src_fs, src = resolve(path, storage)
            before = decode(read_bytes(src_fs, src), max_pixels=10**10)[0]
        except Exception:  # noqa: BLE001 - a source deleted or changed since: the restored crop alone
            before = None
        b, a = side_by_side(before, after)
        out.append({"path": path, "row": by_path.get(path, {}), "before": b, "after": a})
    return out


# --- the reports ------------------------------------------------------------------------------------

def _model_lines(model: str, storage: StorageConfig) -> list[tuple[str, str]]:
    """What `raeae info` says of each model of a run, one line each (nothing if it cannot be read now)."""
    try:
        from raeae.info import describe, learned_text

        return [(f"model {d['model']}", f"{d['model_id']}: {d['network']}; {learned_text(d['header'])}")
                for d in describe(model, storage)]
    except Exception:  # noqa: BLE001 - a checkpoint gone since the run: its id is still in the summary
        return []


def run_page(title: str, fs, files: list[str], summary: dict, storage: StorageConfig) -> str:
    """The page of one run: what ran, counts, throughput, errors, damage found, the gallery."""
    from raeae import __version__
    from raeae import report_page as P

    rows = read_small(fs, files)
    ok = rows.filter(pc.equal(rows["status"], "ok"))
    kinds = {k: v for k, v in zip(*np.unique(np.array([d or "-" for d in ok["damage"].to_pylist()], dtype=object),
                                             return_counts=True))} if len(ok) else {}
    cluster = summary.get("cluster") or {}
    ran = [("input", summary.get("input") or summary.get("archive")), ("output", summary.get("output")),
           ("model", f"{summary.get('model', '')} {summary.get('model_id', '')}".strip()),
           *_model_lines(summary.get("model", ""), storage),
           ("raeae", summary.get("raeae_version") or __version__),
           ("cluster", ", ".join(f"{v:g} {k[:-1] if v == 1 else k}" for k, v in cluster.items()) if cluster else None),
           ("settings", " ".join(f"--{k.replace('_', '-')} {v}" for k, v in (summary.get("settings") or {}).items()))]
    qualities = [q for q in ok["jpeg_quality"].to_pylist() if q is not None]
    stages = stage_seconds(rows)
    sections = [P.key_values("What ran", ran),
                P.counts(len(ok), len(rows) - len(ok), int(summary.get("skipped_files", summary.get("inputs_skipped", 0)))),
                P.throughput(summary, stages, bar_chart(stages, "busy seconds", "#4c72b0")),
                P.errors(error_groups(rows)),
                P.damage([bar_chart({str(k): int(v) for k, v in kinds.items()}, "images"), sigma_chart(ok)], qualities),
                P.gallery(gallery(fs, files, rows, storage))]
    return P.page(title, sections)


def restore_report(output: str, storage: StorageConfig = StorageConfig(), summary: dict | None = None) -> str:
    """Write ``OUTPUT/_report.html`` for a plain ``raeae restore`` output; returns its path."""
    from raeae.contract import SUMMARY_FILE, parquet_files

    fs, root = resolve(output, storage)
    if summary is None:
        try:
            summary = json.loads(read_bytes(fs, posixpath.join(root, SUMMARY_FILE)))
        except (OSError, ValueError):
            summary = {"output": output}
    text = run_page("raeae restore", fs, parquet_files(fs, root), summary, storage)
    target = posixpath.join(root, REPORT_FILE)
    write_bytes(fs, target, text.encode())
    return target


def nightly_reports(output: str, storage: StorageConfig = StorageConfig(), run_id: str | None = None) -> list[str]:
    """Write ``OUTPUT/_reports/<run-id>.html`` for one committed night (or every one) and the index
    of the nights; returns the paths written."""
    from raeae import report_page as P
    from raeae.contract import manifest_infos

    fs, root = resolve(output, storage)
    manifests = manifest_infos(fs, root)
    written = []
    for m in manifests:
        if run_id is None or m["run_id"] == run_id:
            files = [posixpath.join(root, rel) for rel in m["files"]]
            text = run_page(f"raeae nightly run {m['run_id']}", fs, files, m, storage)
            written.append(posixpath.join(root, REPORTS_DIR, f"{m['run_id']}.html"))
            write_bytes(fs, written[-1], text.encode())
    index = P.page(f"raeae nightly: {output}", [P.nights(manifests, nights_chart(manifests))])
    written.append(posixpath.join(root, REPORTS_DIR, "index.html"))
    write_bytes(fs, written[-1], index.encode())
    return written


def report(cfg: ReportConfig) -> list[str]:
    """``raeae report``: the report(s) of an output, written again; returns the paths written."""
    from raeae.contract import MANIFESTS

    if not cfg.output:
        raise ValueError("--output is required: a raeae restore or nightly output")
    fs, root = resolve(cfg.output, cfg.storage)
    try:
        nightly = fs.get_file_info(posixpath.join(root, MANIFESTS)).type.name == "Directory"
        paths = nightly_reports(cfg.output, cfg.storage) if nightly else [restore_report(cfg.output, cfg.storage)]
    except OSError as exc:
        raise StorageError(explain(exc, cfg.output)) from None
    for p in paths:
        print(f"raeae report: {p}")
    return paths


def write_quietly(prefix: str, write, *args, **kwargs):
    """Run a report writer after a committed run: its result, or None and one line on stderr (a report
    that cannot be written never fails the run that committed)."""
    try:
        return write(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        print(f"{prefix}: report not written ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
