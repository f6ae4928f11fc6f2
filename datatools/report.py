"""One self-contained HTML report of a curation output: how the scores are distributed, where
a RULES file would cut, what each filter removes, what clips look like at each decile of each
score, where the time went, and why inputs were quarantined. Plots are matplotlib PNGs and
thumbnails JPEGs, embedded as data URIs: the file opens anywhere, offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate import registry, schema
from curate.sample import clip_frames



def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _thumb(row: dict, width: int = 116) -> str | None:
    """Data URI of a clip's picture: the JPEG of its file's middle frame, or the moving preview a
    deferred run made (no file); None when there is neither, or it cannot be read."""
    import cv2

    from curate.sample import decode_frames

    if not row.get(schema.CLIP_URI):
        return "data:image/webp;base64," + base64.b64encode(row[schema.PREVIEW]).decode() if row.get(schema.PREVIEW) else None
    try:
        frames, _ = decode_frames(row[schema.CLIP_URI], {max(0, clip_frames(row) // 2)}, ["opencv", "pyav"])
    except Exception:  # noqa: BLE001 - a thumbnail is never worth failing the report
        return None
    (rgb,) = frames.values()
    h = max(1, int(round(rgb.shape[0] * width / rgb.shape[1])))
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(cv2.resize(rgb, (width, h), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR))
    return "data:image/jpeg;base64," + base64.b64encode(jpg.tobytes()).decode() if ok else None


def _thresholds(table: pa.Table, rules) -> dict[str, list[tuple[str, float]]]:
    from datatools.select import evaluate

    marks: dict[str, list[tuple[str, float]]] = {}
    for f in rules.filters if rules else []:
        try:
            _, info = evaluate(table, f.model_copy(update={"nulls": "keep"}))
        except Exception:  # noqa: BLE001 - e.g. a string comparison: nothing to draw
            continue
        if isinstance(info.get("threshold"), (int, float)):
            marks.setdefault(info["column"], []).append((f.label(), float(info["threshold"])))
    return marks


def _dedup_section(table: pa.Table, dedup: str, groups_shown: int = 5, per_group: int = 8) -> str:
    """The largest near-duplicate groups of `curate dedup`, one thumbnail row each."""
    from datatools.dedup import DUP_DISTANCE, DUP_GROUP, GROUP_SIZE, read_groups

    g = read_groups(dedup)
    cols = [schema.CLIP_ID, schema.CLIP_URI, schema.START_FRAME, schema.END_FRAME, schema.NUM_FRAMES, schema.PREVIEW]
    rows = {r[schema.CLIP_ID]: r for r in table.select([c for c in cols if c in table.column_names]).to_pylist()}
    members: dict[str, list[tuple[float, str]]] = {}
    for cid, grp, size, dist in zip(g.column(schema.CLIP_ID).to_pylist(), g.column(DUP_GROUP).to_pylist(),
                                    g.column(GROUP_SIZE).to_pylist(), g.column(DUP_DISTANCE).to_pylist()):  # fmt: skip
        if grp is not None and size > 1 and cid in rows:
            members.setdefault(grp, []).append((dist or 0.0, cid))
    biggest = sorted(members.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:groups_shown]
    out = [f"<h2>Near-duplicate groups</h2><p>{len(members)} groups with more than one clip in {html.escape(str(dedup))}; "
           f"the {len(biggest)} largest, representative first, distance to it below each</p>"]  # fmt: skip
    for grp, mem in biggest:
        strip = []
        for dist, cid in sorted(mem)[:per_group]:
            r = rows[cid]
            thumb = _thumb(r)
            if thumb:
                strip.append(f"<figure><img alt='{html.escape(cid)}' src='{thumb}'><figcaption>{dist:.1f}</figcaption></figure>")
        out.append(f"<div class='dupgroup'><p>{html.escape(grp)}: {len(mem)} clips</p><div class='strip'>{''.join(strip)}</div></div>")
    return "".join(out)


def build_report(out: str, rules_path: str | None = None, dedup: str | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from curate.shards import MANIFEST_FILE, QUARANTINE_FILE, read_shards
    from datatools.select import load_rules, select

    table = read_shards(out)
    manifest = json.loads((Path(out) / MANIFEST_FILE).read_text())
    qpath = Path(out) / QUARANTINE_FILE
    quarantine = pq.read_table(qpath).to_pylist() if qpath.exists() else []
    rules = load_rules(rules_path) if rules_path else None
    marks = _thresholds(table, rules)
    parts: list[str] = []
    c = manifest["counts"]
    parts.append(
        f"<h1>curate report</h1><p>{html.escape(out)} &middot; config <code>{html.escape(str(manifest['config'].get('name')))}</code>"
        f" (hash {manifest['config_hash']}) &middot; {c['inputs']} inputs, {c['videos_ok']} ok, {c['quarantined']} quarantined,"
        f" {c['clips']} clips, {c['hours_in']:.3f} h in, {c['hours_out']:.3f} h out</p>"
    )
    if manifest.get("skipped_stages"):
        items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in manifest["skipped_stages"].items())
        parts.append(f"<h2>Skipped stages</h2><ul>{items}</ul>")

    # funnel
    if rules and rules.filters:
        try:
            _, funnel = select(table, rules)
            labels = ["all clips"] + [s["filter"] for s in funnel["filters"]]
            kept = [funnel["input"]["clips"]] + [s["kept_clips"] for s in funnel["filters"]]
            alone = [0] + [s["alone_removed_clips"] for s in funnel["filters"]]
            fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(labels)))
            y = np.arange(len(labels))[::-1]
            ax.barh(y, kept, color="#4c78a8", label="kept after this filter (cumulative)")
            ax.barh(y, alone, left=0, color="#e45756", alpha=0.45, label="removed by this filter alone")
            ax.set_yticks(y, labels)
            ax.set_xlabel("clips")
            ax.legend(loc="lower right", fontsize=8)
            rows = "".join(
                f"<tr><td>{html.escape(s['filter'])}</td><td>{s.get('threshold', ''):.4g}</td><td>{s['alone_removed_clips']}</td>"
                f"<td>{s['removed_clips']}</td><td>{s['kept_clips']}</td><td>{s['kept_hours']:.4f}</td></tr>"
                for s in funnel["filters"]
            )
            parts.append(
                f"<h2>Funnel ({html.escape(str(rules_path))})</h2><img alt='funnel' src='{_png(fig)}'>"
                "<table><tr><th>filter</th><th>threshold</th><th>removes alone</th><th>removes here</th><th>kept</th>"
                f"<th>kept hours</th></tr>{rows}</table>"
            )
        except Exception as e:  # noqa: BLE001 - e.g. refused nulls: show why, keep the rest
            parts.append(f"<h2>Funnel</h2><p class='err'>{html.escape(str(e))}</p>")

    # score distributions + decile strips
    thumbs: dict[str, str | None] = {}
    rows = table.to_pylist()
    parts.append("<h2>Scores</h2>")
    for col in [f.name for f in registry.score_fields() if pa.types.is_floating(f.type)] + [schema.DURATION_S]:
        if col not in table.column_names or table.column(col).null_count == table.num_rows:
            continue
        vals = np.array([r[col] for r in rows if r[col] is not None], dtype=np.float64)
        fig, ax = plt.subplots(figsize=(6, 2.4))
        ax.hist(vals, bins=min(40, max(5, len(vals) // 2)), color="#72b7b2")
        for label, t in marks.get(col, []):
            ax.axvline(t, color="#e45756", linestyle="--")
            ax.text(t, ax.get_ylim()[1] * 0.97, label, fontsize=7, color="#e45756", rotation=90, ha="right", va="top")
        ax.set_title(f"{col} (n={len(vals)}, nulls={table.column(col).null_count})", fontsize=9)
        strip = []
        ordered = sorted((r for r in rows if r[col] is not None and (r[schema.CLIP_URI] or r.get(schema.PREVIEW))), key=lambda r: r[col])
        for d in range(10):
            if not ordered:
                break
            r = ordered[min(len(ordered) - 1, int((d + 0.5) / 10 * len(ordered)))]
            key = r[schema.CLIP_ID]
            if key not in thumbs:
                thumbs[key] = _thumb(r)
            if thumbs[key]:
                strip.append(f"<figure><img alt='{html.escape(key)}' src='{thumbs[key]}'><figcaption>d{d}: {r[col]:.4g}</figcaption></figure>")
        parts.append(f"<div class='score'><img alt='{col} histogram' src='{_png(fig)}'><div class='strip'>{''.join(strip)}</div></div>")

    if dedup:
        parts.append(_dedup_section(table, dedup))

    # timings and quarantine
    st = manifest.get("stage_seconds", {})
    if st:
        fig, ax = plt.subplots(figsize=(6, 0.4 + 0.35 * len(st)))
        ax.barh(list(st), list(st.values()), color="#f58518")
        ax.set_xlabel("seconds (summed over workers)")
        parts.append(f"<h2>Stage timings</h2><img alt='stage timings' src='{_png(fig)}'>")
    reasons = c.get("quarantine_reasons", {})
    qrows = "".join(f"<tr><td>{html.escape(q[schema.SOURCE_URI])}</td><td>{q[schema.REASON]}</td><td>{html.escape(q[schema.DETAIL] or '')}</td></tr>"
                    for q in quarantine[:200])  # fmt: skip
    parts.append(
        "<h2>Quarantine</h2><p>" + (", ".join(f"{k}: {v}" for k, v in reasons.items()) or "none") + "</p>"
        + (f"<table><tr><th>input</th><th>reason</th><th>detail</th></tr>{qrows}</table>" if qrows else "")
    )
    style = (
        "body{font-family:sans-serif;margin:24px;max-width:1300px}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px}.score{margin:8px 0 20px 0}"
        ".strip{display:flex;gap:4px;flex-wrap:nowrap;overflow-x:auto}figure{margin:0;font-size:11px;text-align:center}.err{color:#b00}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>curate report</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"


def write_report(out: str, dest: str | None = None, rules_path: str | None = None, dedup: str | None = None) -> Path:
    dest_path = Path(dest) if dest else Path(out) / "report.html"
    text = build_report(out, rules_path, dedup)
    tmp = dest_path.with_name(f".{dest_path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(dest_path)
    return dest_path
