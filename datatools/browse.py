"""`curate browse OUT`: pick thresholds by looking.

A local page with one control per score column (a range for numbers, in values or percentiles;
a checkbox per label; true/false/any for booleans), the filters of a RULES file loaded into
them. Every change asks the server for what the page shows: the funnel (computed by the very
function `curate select` uses, on the very rules the page would save, so its numbers are
select's), a histogram per column of what is kept with the thresholds drawn on it, moving
previews of the clips sorted by any column, the clips at the margin of the control last moved
(just kept and just removed, among the clips the other rules keep), and, with `curate dedup`
groups, which clip each group keeps and which it drops. "Save" writes a RULES file that
`curate select` reads back into the same subset.

The work is server-side over columns held in memory (numpy): bins and sort orders are computed
once at start, so a change costs a pass of masks over the rows, not a pass over parquet; the
page asks for one page of clips at a time. Clip files and previews are served by row number
only; a row's file must resolve inside OUT/clips (no request path is ever joined to a file
system path, and a symlink out of OUT is refused), and nothing but `--save` is ever written.

Flask (Werkzeug) as `curate vote`, bound to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate import schema
from curate.dataset import CAPTION_PREFERENCE, best_caption
from curate.errors import UserError
from datatools.select import _EXPR, CAPTION, DedupRule, Filter, Rules, SelectError, funnel, parse_percent, read_dedup_groups

BINS = 40
MAX_LABELS = 64  # a string column with more distinct values is text, not labels
# numbers that place or name a clip rather than describe it
NOT_CONTROLS = {schema.CLIP_INDEX, schema.START_FRAME, schema.END_FRAME, schema.START_S, schema.END_S, schema.PHASH,
                # names and free text: a handful of sources would read as labels
                schema.CLIP_ID, schema.VIDEO_ID, schema.SOURCE_URI, schema.CLIP_URI, schema.OCR_TEXT, CAPTION,
                schema.CAPTION_COCA, schema.CAPTION_VBLIP, schema.CAPTION_LLM}
MAX_PAGE = 96
MARGIN = 8


class BrowseError(UserError, ValueError):
    """A request the page cannot be answered for (one line, shown on the page)."""


@dataclass
class Column:
    name: str
    kind: str  # "number" | "label" | "bool"
    nulls: int
    values: np.ndarray | None = None  # float64, NaN for null (numbers)
    sorted_values: np.ndarray | None = None  # the non-null values, sorted (percentile of a value)
    edges: np.ndarray | None = None
    bin_of: np.ndarray | None = None  # bin per row, -1 for null
    labels: list = field(default_factory=list)  # labels (and booleans) in display order
    label_of: np.ndarray | None = None  # index into labels per row, -1 for null

    def describe(self) -> dict:
        d = {"name": self.name, "kind": self.kind, "nulls": self.nulls}
        if self.kind == "number":
            d.update(min=float(self.edges[0]), max=float(self.edges[-1]), edges=self.edges.tolist(),
                     counts=np.bincount(self.bin_of[self.bin_of >= 0], minlength=BINS).tolist())  # fmt: skip
        else:
            d.update(labels=[_json_label(v) for v in self.labels],
                     counts=np.bincount(self.label_of[self.label_of >= 0], minlength=len(self.labels)).tolist())  # fmt: skip
        return d

    def kept_counts(self, keep: np.ndarray) -> list[int]:
        idx = self.bin_of if self.kind == "number" else self.label_of
        size = BINS if self.kind == "number" else len(self.labels)
        return np.bincount(idx[keep & (idx >= 0)], minlength=size).tolist()

    def percentile_of(self, value: float) -> float | None:
        """Share of the non-null values below `value`, in percent."""
        if self.sorted_values is None or len(self.sorted_values) == 0:
            return None
        return 100.0 * float(np.searchsorted(self.sorted_values, value, side="left")) / len(self.sorted_values)


def _json_label(v):
    return v if isinstance(v, (str, bool)) else str(v)


def columns_of(table: pa.Table) -> dict[str, Column]:
    """The columns a control can filter: numbers (not positions or ids), booleans, and strings
    with at most MAX_LABELS distinct values; the scores first (in the table's order), then the
    clip's own columns (duration, size, rate), which a user filters less often."""
    out: dict[str, Column] = {}
    core = {f.name for f in schema.CLIP_FIELDS}
    names = [n for n in table.column_names if n not in core] + [n for n in table.column_names if n in core]
    for name in names:
        col = table.column(name)
        typ = col.type
        if name in NOT_CONTROLS:
            continue
        if (pa.types.is_integer(typ) or pa.types.is_floating(typ)) and not pa.types.is_uint64(typ):
            values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
            values = np.where(np.isfinite(values), values, np.nan)  # +-inf: off the slider, like a null
            ok = ~np.isnan(values)
            if not ok.any():
                continue
            lo, hi = float(values[ok].min()), float(values[ok].max())
            edges = np.linspace(lo, hi if hi > lo else lo + 1.0, BINS + 1)
            bin_of = np.full(len(values), -1, dtype=np.int64)
            bin_of[ok] = np.clip(np.searchsorted(edges, values[ok], side="right") - 1, 0, BINS - 1)
            out[name] = Column(name, "number", int((~ok).sum()), values, np.sort(values[ok]), edges, bin_of)
        elif pa.types.is_boolean(typ) or pa.types.is_string(typ) or pa.types.is_large_string(typ):
            uniq = pc.unique(col.drop_null()).to_pylist()
            if not uniq or len(uniq) > MAX_LABELS or (len(uniq) == col.length() - col.null_count and len(uniq) > 8):
                continue  # free text, or an id per row
            labels = [True, False] if pa.types.is_boolean(typ) else sorted(uniq)
            pos = {v: i for i, v in enumerate(labels)}
            label_of = np.array([-1 if v is None else pos[v] for v in col.to_pylist()], dtype=np.int64)
            out[name] = Column(name, "bool" if pa.types.is_boolean(typ) else "label", col.null_count, labels=labels, label_of=label_of)
    return out


def slots_of(rules: Rules, columns: dict[str, Column]) -> list[dict]:
    """A RULES file's filters as the page's controls, in the file's order. A filter a control can
    hold becomes that control's setting (a lower bound: `>=` or drop_bottom; an upper bound: `<=`
    or drop_top; a label left out: `!=`; a boolean: `==`); any other (strict bounds, a second
    bound on the same side, a column with no control) stays as it is, shown as a rule the page
    can switch off but not edit. Either way the page saves them back in this order."""
    slots, taken = [], set()
    for i, f in enumerate(rules.filters):
        slot = {"key": f"other:{i}", "slot": "other", "filter": f.model_dump(mode="json", exclude_none=True), "label": f.label()}
        # the filter as written travels with its control until the control moves (`1e-3` stays `1e-3`)
        common = {"nulls": f.nulls, "name": f.name, "filter": f.model_dump(mode="json", exclude_none=True)}
        if f.where:
            m = _EXPR.match(f.where)
            name, op, raw = m.groups() if m else (None, None, None)
            c = columns.get(name)
            raw = (raw or "").strip()
            if c is not None and c.kind == "number" and op in (">=", "<="):
                try:
                    value = float(raw)
                except ValueError:
                    value = None
                if value is not None:
                    side = "lo" if op == ">=" else "hi"
                    slot = {"key": f"{name}:{side}", "slot": side, "column": name, "mode": "value", "value": value, **common}
            elif c is not None and c.kind == "label" and op == "!=":
                label = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"" else raw
                if label in c.labels:
                    slot = {"key": f"{name}:ne:{label}", "slot": "ne", "column": name, "value": label, **common}
            elif c is not None and c.kind == "bool" and op == "==" and raw.lower() in ("true", "false"):
                slot = {"key": f"{name}:eq", "slot": "eq", "column": name, "value": raw.lower() == "true", **common}
        else:
            try:
                name, pct = parse_percent(f.drop_bottom or f.drop_top)
            except SelectError:
                name = None
            c = columns.get(name)
            if c is not None and c.kind == "number":
                side = "lo" if f.drop_bottom else "hi"
                slot = {"key": f"{name}:{side}", "slot": side, "column": name, "mode": "percentile", "value": pct, **common}
        if slot["key"] in taken:  # a second bound on the same side of one column
            slot = {"key": f"other:{i}", "slot": "other", "filter": f.model_dump(mode="json", exclude_none=True), "label": f.label()}
        taken.add(slot["key"])
        slots.append(slot)
    return slots


class Browser:
    """OUT's rows and what the page asks of them; no Flask in here (tests call it directly)."""

    def __init__(self, out: str, rules: Rules, save_to: str | Path, dedup: str | None = None):
        from curate.dataset import OUT, PARQUET, SUBSET, read_rows, what_is
        from curate.storage import OutputStore

        self.table = read_rows(out, "", kinds=(OUT, SUBSET, PARQUET))
        if self.table.num_rows == 0:
            raise BrowseError(f"{out}: has no clip rows")
        missing = [c for c in (schema.CLIP_ID, schema.DURATION_S) if c not in self.table.column_names]
        if missing:
            raise BrowseError(f"{out}: no {' or '.join(missing)} column: not curate's clip rows")
        self.out = out
        self.store = OutputStore(out, create=False) if what_is(out) == OUT else None
        self.rules = rules
        self.save_to = Path(save_to)
        self.columns = columns_of(self.table)
        self.n = self.table.num_rows
        if dedup is not None:
            self.rules = rules.model_copy(update={"dedup": DedupRule(groups=dedup, keep=rules.dedup.keep if rules.dedup else "longest")})
        self.groups = read_dedup_groups(self.rules.dedup) if self.rules.dedup else None
        ids = self.table.column(schema.CLIP_ID).to_pylist()
        self.clip_ids = ids
        if self.groups is not None:
            names = sorted(set(self.groups.values()) - {None})
            gpos = {g: i for i, g in enumerate(names)}
            self.group_of = np.array([gpos.get(self.groups.get(c), -1) for c in ids], dtype=np.int64)
        self._orders: dict[tuple[str, bool], np.ndarray] = {}
        self._lock = threading.Lock()
        self.has_preview = self._present(schema.PREVIEW)
        self.has_file = self._present(schema.CLIP_URI)
        self.durations = np.nan_to_num(self.table.column(schema.DURATION_S).to_numpy(zero_copy_only=False).astype(np.float64))

    def _present(self, name: str) -> np.ndarray:
        if name not in self.table.column_names:
            return np.zeros(self.n, dtype=bool)
        return pc.is_valid(self.table.column(name)).to_numpy(zero_copy_only=False).astype(bool)

    # -- what the page starts from -----------------------------------------------------------
    def meta(self) -> dict:
        sortable = [c for c in self.table.column_names if c not in (schema.PREVIEW,) and _sortable(self.table.column(c).type)]
        return {"out": str(self.out), "rows": self.n, "hours": float(self.durations.sum()) / 3600.0,
                "columns": [c.describe() for c in self.columns.values()], "slots": slots_of(self.rules, self.columns),
                "dedup": None if self.rules.dedup is None else {"groups": self.rules.dedup.groups, "keep": self.rules.dedup.keep},
                "keep_choices": ["longest", *[c for c, col in self.columns.items() if col.kind == "number"]],
                "sortable": sortable, "save_to": str(self.save_to)}  # fmt: skip

    # -- the rules a request stands for --------------------------------------------------------
    def rules_from(self, body: dict) -> Rules:
        """The page's rules: its filters as sent, the dedup groups this server was given (never a
        path from the page), the RULES file's caption mix."""
        filters = body.get("filters", [])
        dedup = body.get("dedup")
        if not isinstance(filters, list) or (dedup is not None and not isinstance(dedup, dict)):
            raise BrowseError("filters must be a list and dedup an object or null")
        if dedup is not None and self.rules.dedup is None:
            raise BrowseError("no dedup groups: start `curate browse` with --dedup DUPS (a `curate dedup` output)")
        try:
            parsed = [Filter.model_validate(f) for f in filters]
            rule = None if dedup is None else DedupRule(groups=self.rules.dedup.groups, keep=str(dedup.get("keep", "longest")))
        except ValueError as e:
            raise BrowseError(_first_line(e)) from None
        return Rules(filters=parsed, dedup=rule, caption=self.rules.caption)

    # -- one answer per control change -----------------------------------------------------------
    def view(self, body: dict) -> dict:
        rules = self.rules_from(body)
        f = funnel(self.table, rules, self.groups)
        for step in f.steps:
            c = self.columns.get(step.get("column"))
            if c is not None and c.kind == "number" and isinstance(step.get("threshold"), (int, float)):
                step["at_percentile"] = c.percentile_of(float(step["threshold"]))
        answer = {
            "funnel": {"input": {"clips": self.n, "hours": f.hours}, "filters": f.steps,
                       "output": {"clips": int(f.keep.sum()), "hours": f.kept_hours}},
            "hist": {name: c.kept_counts(f.keep) for name, c in self.columns.items()},
            "clips": self.clips(f, body),
        }  # fmt: skip
        focus = body.get("focus")
        if isinstance(focus, int) and 0 <= focus < len(rules.filters):
            answer["margin"] = self.margin(f, focus, len(rules.filters))
        if rules.dedup is not None:
            answer["dups"] = self.dups(f, len(rules.filters))
        return answer

    def clips(self, f, body: dict) -> dict:
        which = body.get("which", "kept")
        sort = body.get("sort") or schema.DURATION_S
        desc = bool(body.get("desc", True))
        try:
            offset = max(0, int(body.get("offset", 0)))
            limit = min(MAX_PAGE, max(1, int(body.get("limit", 24))))
        except (TypeError, ValueError):
            raise BrowseError("offset and limit must be integers") from None
        if which not in ("kept", "removed", "all"):
            raise BrowseError("which: kept, removed or all")
        if sort not in self.table.column_names or not _sortable(self.table.column(sort).type):
            raise BrowseError(f"sort: no sortable column {sort!r}")
        mask = f.keep if which == "kept" else ~f.keep if which == "removed" else np.ones(self.n, dtype=bool)
        order = self._order(sort, desc)
        rows = order[mask[order]]
        return {"total": int(len(rows)), "offset": offset, "sort": sort, "desc": desc, "which": which,
                "rows": self.cards(rows[offset:offset + limit], [sort], f.keep)}  # fmt: skip

    def _order(self, name: str, desc: bool) -> np.ndarray:
        """Row numbers sorted by a column, nulls last either way (computed once per column)."""
        with self._lock:
            key = (name, desc)
            if key not in self._orders:
                idx = pc.sort_indices(self.table.select([name]), sort_keys=[(name, "descending" if desc else "ascending", "at_end")])
                self._orders[key] = idx.to_numpy()
            return self._orders[key]

    def margin(self, f, focus: int, n_filters: int) -> dict:
        """The clips nearest the threshold of filter `focus` on either side, among those every
        other filter keeps: what moving that control a little would add or take away."""
        others = np.ones(self.n, dtype=bool)
        for j in range(n_filters):
            if j != focus:
                others &= f.masks[j]
        step = f.steps[focus]
        mask = f.masks[focus]
        c = self.columns.get(step.get("column"))
        thr = step.get("threshold")
        out = {"filter": step["filter"], "column": step.get("column"), "threshold": thr}
        for side, cand in (("kept", others & mask), ("removed", others & ~mask)):
            rows = np.flatnonzero(cand)
            if c is not None and c.kind == "number" and isinstance(thr, (int, float)) and len(rows):
                dist = np.abs(c.values[rows] - float(thr))
                dist = np.where(np.isnan(dist), np.inf, dist)
                k = min(MARGIN, len(rows))
                near = np.argpartition(dist, k - 1)[:k]
                rows = rows[near[np.lexsort((rows[near], dist[near]))]]
            out[side] = self.cards(rows[:MARGIN], [step["column"]] if step.get("column") else [], f.keep)
            out[side + "_total"] = int(cand.sum())
        return out

    def dups(self, f, n_filters: int, shown: int = 6, per_group: int = 5) -> dict:
        """The groups dedup thins the most: the member it keeps, then those it drops."""
        filtered = np.ones(self.n, dtype=bool)
        for m in f.masks[:n_filters]:
            filtered &= m
        dedup = f.masks[n_filters]
        dropped = np.flatnonzero(filtered & ~dedup & (self.group_of >= 0))
        kept = np.flatnonzero(filtered & dedup & (self.group_of >= 0))
        keeper = dict(zip(self.group_of[kept].tolist(), kept.tolist()))
        counts = np.bincount(self.group_of[dropped], minlength=1) if len(dropped) else np.zeros(1, dtype=np.int64)
        top = [int(g) for g in np.argsort(-counts, kind="stable")[:shown] if counts[g] > 0]
        groups = []
        for g in top:
            members = dropped[self.group_of[dropped] == g][:per_group]
            groups.append({"size": int(counts[g]) + 1, "kept": self.cards(np.array([keeper[g]]), [], f.keep)[0] if g in keeper else None,
                           "dropped": self.cards(members, [], f.keep)})  # fmt: skip
        return {"groups_thinned": int((counts > 0).sum()), "dropped": int(len(dropped)), "groups": groups}

    def cards(self, rows: np.ndarray, show: list[str], keep: np.ndarray) -> list[dict]:
        """What the page draws per clip: its row number (the only handle on its media), id,
        duration, the values of the columns in play and the chosen caption-like text."""
        rows = [int(r) for r in rows]
        if not rows:
            return []
        cols = list(dict.fromkeys([schema.CLIP_ID, schema.DURATION_S, *show, CAPTION, *CAPTION_PREFERENCE]))
        sub = self.table.select([c for c in cols if c in self.table.column_names]).take(rows).to_pylist()
        cards = []
        for r, rec in zip(rows, sub):
            caption = best_caption(rec)
            cards.append({"row": r, "clip_id": rec[schema.CLIP_ID], "duration_s": rec.get(schema.DURATION_S), "kept": bool(keep[r]),
                          "values": {c: _jsonable(rec.get(c)) for c in show if c in rec}, "caption": caption,
                          "media": "webp" if self.has_preview[r] else "mp4" if self.has_file[r] else None})  # fmt: skip
        return cards

    # -- files -------------------------------------------------------------------------------------
    def media(self, row: int) -> tuple[str, str | bytes] | None:
        """("image/webp", bytes) of a row's preview, or ("video/mp4", path) of its clip file when
        that file is inside OUT/clips; None otherwise."""
        if not 0 <= row < self.n:
            return None
        if self.has_preview[row]:
            return "image/webp", self.table.column(schema.PREVIEW)[row].as_py()
        if not self.has_file[row] or self.store is None:
            return None
        from curate.shards import CLIPS, clip_key

        uri = self.table.column(schema.CLIP_URI)[row].as_py()
        key = clip_key(uri)
        if key is None:
            return None
        if not self.store.local:
            return "video/mp4", self.store.read_bytes(CLIPS, *key)
        root = os.path.realpath(os.path.join(self.store.path(CLIPS), ""))
        real = os.path.realpath(self.store.path(CLIPS, *key))
        if not real.startswith(root) or not os.path.isfile(real):
            return None  # a symlink out of OUT, or gone
        return "video/mp4", real

    # -- save --------------------------------------------------------------------------------------
    def save(self, body: dict) -> dict:
        """Write the page's rules to --save (atomically) and check they read back the same."""
        import yaml

        from curate.config import load_model

        rules = self.rules_from(body)
        f = funnel(self.table, rules, self.groups)
        data = rules.model_dump(mode="json", exclude_none=True)
        for filt in data["filters"]:
            if filt.get("nulls") == "refuse":
                del filt["nulls"]  # the default
        text = "# written by `curate browse " + str(self.out) + "`\n" + yaml.safe_dump(data, sort_keys=False)
        self.save_to.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.save_to.with_name(f".{self.save_to.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.save_to)
        again = load_model(Rules, self.save_to)  # what `curate select` will read
        assert again == rules.model_copy(update={"filters": [Filter.model_validate(x) for x in data["filters"]]})
        command = f"curate select {self.save_to} -s {self.out} -o SUBSET"
        return {"path": str(self.save_to), "yaml": text, "clips": int(f.keep.sum()), "command": command}


def _sortable(typ: pa.DataType) -> bool:
    return pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_string(typ) or pa.types.is_boolean(typ)


def _jsonable(v):
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _first_line(e: Exception) -> str:
    text = str(e)
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    # pydantic: "1 validation error for Filter\nwhere\n  message [type=...]"
    return "; ".join(re.sub(r"\s*\[type=.*$", "", x) for x in lines[1:3]) if len(lines) > 1 else text


def make_app(browser: Browser):
    from flask import Flask, abort, jsonify, request, send_file

    app = Flask(__name__)

    def body() -> dict:
        b = request.get_json(silent=True)
        if not isinstance(b, dict):
            abort(400)
        return b

    def answer(fn):
        try:
            return jsonify(fn(body()))
        except UserError as e:  # the page's request cannot be answered (a BrowseError, select's refused nulls)
            return jsonify({"error": str(e)}), 400

    @app.get("/")
    def page():
        return PAGE, 200, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}

    @app.get("/api/meta")
    def meta():
        return jsonify(browser.meta())

    @app.post("/api/view")
    def view():
        return answer(browser.view)

    @app.post("/api/save")
    def save():
        return answer(browser.save)

    @app.get("/media/<int:row>")
    def media(row: int):
        got = browser.media(row)
        if got is None:
            abort(404)
        mimetype, what = got
        if isinstance(what, bytes):
            import io

            return send_file(io.BytesIO(what), mimetype=mimetype, max_age=3600)
        return send_file(what, mimetype=mimetype, conditional=True, max_age=3600)

    return app


def serve(browser: Browser, host: str = "127.0.0.1", port: int = 8766) -> None:
    from werkzeug.serving import make_server

    server = make_server(host, port, make_app(browser), threaded=True)
    print(f"browsing {browser.out} ({browser.n} clips): http://{host}:{server.server_port}/  (Ctrl-C to stop)", flush=True)
    server.serve_forever()


PAGE = (Path(__file__).with_name("browse.html")).read_text()
