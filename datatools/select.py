"""Thresholds as views: filters over stored scores, a funnel, and the training caption per clip.

Scoring never filters; this step does, cheaply, over the shards: no model runs and no video is
read, so a user can sweep thresholds in seconds. A filter is absolute (`flow_mean >= 0.5`) or
relative as SVD states them (drop the bottom/top P% of a column); percentiles are computed over
the whole scored set, so a filter's meaning does not depend on the filters before it, and the
funnel can show what each filter removes alone (overlaps visible) and in sequence.

A null score never passes a filter silently: `nulls: refuse` (the default) stops with an error
naming the column and the null count; `drop` removes those rows; `keep` lets them through.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from curate import schema
from curate.config import load_model
from curate.dataset import SUBSET_FILE
from curate.errors import UserError
from curate.params import Strict
from curate.stage import set_columns

FUNNEL_FILE = "funnel.json"
CAPTION = "caption"  # the training caption chosen per clip (select adds it)
CAPTION_SOURCE = "caption_source"
CAPTION_SOURCES = (schema.CAPTION_COCA, schema.CAPTION_VBLIP, schema.CAPTION_LLM, schema.CAPTION_VLM)

_OPS = {">=": pc.greater_equal, "<=": pc.less_equal, ">": pc.greater, "<": pc.less, "==": pc.equal, "!=": pc.not_equal}
_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*$")


class SelectError(UserError, ValueError):
    pass


class Filter(Strict):
    """Exactly one of `where`, `drop_bottom`, `drop_top`."""

    where: str | None = Field(None, description='"column OP value", OP one of >= <= > < == !=')
    drop_bottom: str | None = Field(None, description='"column=P%": drop the P% lowest (keep >= the P-th percentile)')
    drop_top: str | None = Field(None, description='"column=P%": drop the P% highest (keep <= the (100-P)-th percentile)')
    nulls: Literal["refuse", "drop", "keep"] = "refuse"
    name: str | None = None

    @model_validator(mode="after")
    def _one(self) -> "Filter":
        given = [k for k in ("where", "drop_bottom", "drop_top") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("a filter needs exactly one of where, drop_bottom, drop_top")
        return self

    def label(self) -> str:
        if self.name:
            return self.name
        if self.where:
            return self.where.strip()
        kind = "drop_bottom" if self.drop_bottom else "drop_top"
        return f"{kind} {getattr(self, kind)}"


class CaptionMix(Strict):
    mix: dict[str, float] = Field(default_factory=lambda: {schema.CAPTION_COCA: 0.5, schema.CAPTION_VBLIP: 0.25, schema.CAPTION_LLM: 0.25})
    seed: int = 0

    @model_validator(mode="after")
    def _valid(self) -> "CaptionMix":
        bad = [k for k in self.mix if k not in CAPTION_SOURCES]
        if bad:
            raise ValueError(f"caption.mix: unknown caption columns {bad} (choose from {list(CAPTION_SOURCES)})")
        if any(v < 0 for v in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError("caption.mix: weights must be >= 0 and not all 0")
        return self


class DedupRule(Strict):
    """Keep one clip per near-duplicate group (`curate dedup`), among the clips the filters kept."""

    groups: str = Field(description="a `curate dedup` output directory (or its dedup.parquet)")
    keep: str = Field("longest", description='"longest", or a score column: the group member with its highest value')


class Rules(Strict):
    filters: list[Filter] = Field(default_factory=list)
    dedup: DedupRule | None = None
    caption: CaptionMix = Field(default_factory=CaptionMix)


def load_rules(path: str | Path | None) -> Rules:
    return Rules() if path is None else load_model(Rules, path)


def parse_percent(spec: str) -> tuple[str, float]:
    if "=" not in spec:
        raise SelectError(f"{spec!r}: expected column=P% (for example clip_sim=50%)")
    col, pct = spec.split("=", 1)
    try:
        value = float(pct.strip().rstrip("%"))
    except ValueError:
        raise SelectError(f"{spec!r}: {pct!r} is not a percentage") from None
    if not 0 <= value <= 100:
        raise SelectError(f"{spec!r}: percentage must be within 0..100")
    return col.strip(), value


def _column(table: pa.Table, name: str, filt: Filter) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise SelectError(f"filter {filt.label()!r}: no column {name!r} (columns: {', '.join(table.column_names)})")
    return table.column(name)


def _refuse_nulls(col: pa.ChunkedArray, name: str, filt: Filter) -> None:
    nulls = col.null_count
    if nulls and filt.nulls == "refuse":
        raise SelectError(
            f"filter {filt.label()!r}: column {name!r} has {nulls} null values of {len(col)}; "
            "say how to treat them with nulls: drop | keep"
        )


def _value(raw: str, typ: pa.DataType) -> str | int | float | bool | None:
    """The comparison value, read as the column's type (not YAML's guesses: 1e-3 is a number,
    `no` is a string, a boolean column wants true or false). Quotes around a string are optional.
    None when a number or a boolean was needed and `raw` is not one."""
    raw = raw.strip()
    if pa.types.is_boolean(typ):
        return {"true": True, "false": False}.get(raw.lower())
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"" else raw
    try:
        return int(raw) if pa.types.is_integer(typ) and raw.lstrip("+-").isdigit() else float(raw)
    except ValueError:
        return None


def evaluate(table: pa.Table, filt: Filter) -> tuple[np.ndarray, dict]:
    """Boolean keep-mask of one filter over the whole table, and what it resolved to."""
    info: dict = {"filter": filt.label(), "nulls": filt.nulls}
    if filt.where:
        m = _EXPR.match(filt.where)
        if not m:
            raise SelectError(f"filter {filt.where!r}: expected 'column OP value' with OP in >= <= > < == !=")
        name, op, raw = m.groups()
        col = _column(table, name, filt)
        _refuse_nulls(col, name, filt)
        value = _value(raw, col.type)
        if value is None:
            what = "true or false" if pa.types.is_boolean(col.type) else "a number"
            raise SelectError(f"filter {filt.where!r}: {raw!r} is not {what} (column {name!r} is {col.type})")
        mask = _OPS[op](col, pa.scalar(value))
        info.update(column=name, op=op, threshold=value)
    else:
        bottom = filt.drop_bottom is not None
        name, pct = parse_percent(filt.drop_bottom or filt.drop_top)
        col = _column(table, name, filt)
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            raise SelectError(f"filter {filt.label()!r}: column {name!r} is {col.type}, not numeric")
        _refuse_nulls(col, name, filt)
        values = col.drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
        if len(values) == 0:
            raise SelectError(f"filter {filt.label()!r}: column {name!r} has no values")
        # Percentiles of the sorted values: independent of row order by construction.
        q = float(np.percentile(values, pct if bottom else 100.0 - pct))
        mask = pc.greater_equal(col, q) if bottom else pc.less_equal(col, q)
        info.update(column=name, op=">=" if bottom else "<=", threshold=q, percent=pct, kind="drop_bottom" if bottom else "drop_top")
    return np.asarray(pc.fill_null(mask, filt.nulls == "keep"), dtype=bool), info


def choose_captions(table: pa.Table, mix: CaptionMix) -> tuple[list[str | None], list[str | None]]:
    """Per clip, one caption source drawn with the mix weights among the captions that exist.

    Seeded per clip by (seed, clip_id), so the choice does not depend on row order or on which
    other clips are selected."""
    n = table.num_rows
    sources = [s for s in mix.mix if mix.mix[s] > 0]
    cols = {s: table.column(s).to_pylist() if s in table.column_names else [None] * n for s in sources}
    ids = table.column(schema.CLIP_ID).to_pylist()
    chosen: list[str | None] = [None] * n
    for i in range(n):
        avail = [s for s in sources if cols[s][i]]
        if avail:
            w = np.array([mix.mix[s] for s in avail], dtype=np.float64)
            u = int.from_bytes(hashlib.sha256(f"{mix.seed}:{ids[i]}".encode()).digest()[:8], "big") / 2**64
            chosen[i] = avail[int(np.searchsorted(np.cumsum(w / w.sum()), u, side="right"))]
    return [cols[s][i] if s else None for i, s in enumerate(chosen)], chosen


@dataclass
class Funnel:
    """What a set of rules does to a table: the rows kept, one step per rule (the dicts
    funnel.json holds) and each rule's own keep-mask, in the rules' order (dedup last)."""

    keep: np.ndarray
    steps: list[dict]
    masks: list[np.ndarray]
    hours: float  # of the whole table
    kept_hours: float


def funnel(table: pa.Table, rules: Rules, groups: dict[str, str] | None = None) -> Funnel:
    """The one funnel `select` writes and `browse` shows. `groups` (clip id -> dedup group) saves
    re-reading `rules.dedup.groups` when the caller holds them."""
    n = table.num_rows
    durations = np.nan_to_num(table.column(schema.DURATION_S).to_numpy(zero_copy_only=False).astype(np.float64))

    def hours(mask: np.ndarray) -> float:
        return float(durations[mask].sum()) / 3600.0

    keep = np.ones(n, dtype=bool)
    steps, masks = [], []

    def step(mask: np.ndarray, info: dict) -> None:
        before = keep.copy()
        np.logical_and(keep, mask, out=keep)
        masks.append(mask)
        steps.append({
            **info,
            "alone_removed_clips": int((~mask).sum()),
            "alone_removed_hours": hours(~mask),
            "removed_clips": int((before & ~mask).sum()),
            "removed_hours": hours(before & ~mask),
            "kept_clips": int(keep.sum()),
            "kept_hours": hours(keep),
        })  # fmt: skip

    for f in rules.filters:
        step(*evaluate(table, f))
    if rules.dedup is not None:  # decided on what the filters kept
        step(*dedup_mask(table, keep, rules.dedup, groups))
    return Funnel(keep, steps, masks, hours(np.ones(n, dtype=bool)), hours(keep))


def select(table: pa.Table, rules: Rules) -> tuple[pa.Table, dict]:
    """The subset (with `caption` / `caption_source` added) and its funnel."""
    f = funnel(table, rules)
    keep = f.keep
    subset = table.filter(pa.array(keep))
    captions, chosen = choose_captions(subset, rules.caption)
    subset = set_columns(subset, {CAPTION: captions, CAPTION_SOURCE: chosen},
                         (pa.field(CAPTION, pa.string()), pa.field(CAPTION_SOURCE, pa.string())))
    funnel_json = {
        "input": {"clips": table.num_rows, "hours": f.hours},
        "filters": f.steps,
        "output": {"clips": int(keep.sum()), "hours": f.kept_hours},
        "captions": {s: chosen.count(s) for s in CAPTION_SOURCES} | {"none": chosen.count(None)},
    }
    return subset, funnel_json


def read_dedup_groups(rule: DedupRule) -> dict[str, str]:
    """clip id -> dedup group of a `curate dedup` output."""
    from datatools.dedup import DUP_GROUP, read_groups

    groups = read_groups(rule.groups)
    return dict(zip(groups.column(schema.CLIP_ID).to_pylist(), groups.column(DUP_GROUP).to_pylist()))


def dedup_mask(table: pa.Table, keep: np.ndarray, rule: DedupRule, by_id: dict[str, str] | None = None) -> tuple[np.ndarray, dict]:
    """True for the clips that stay: every clip outside a group, and per group the kept member
    (`rule.keep`) among those the filters kept; clips the dedup output does not know stay (and
    are counted, so a stale dedup output shows)."""
    if by_id is None:
        by_id = read_dedup_groups(rule)
    if rule.keep == "longest":
        col, label = schema.DURATION_S, "longest"
    elif rule.keep in table.column_names:
        col, label = rule.keep, f"highest {rule.keep}"
    else:
        raise SelectError(f"dedup keep {rule.keep!r}: not 'longest' nor a column ({', '.join(sorted(table.column_names))})")
    ids = table.column(schema.CLIP_ID).to_pylist()
    values = table.column(col).to_pylist()

    def rank(i: int) -> tuple:  # the highest value (a null lowest), then the first row
        return values[i] is not None, values[i] if values[i] is not None else 0, -i

    best: dict[str, int] = {}  # group -> its kept member, among the rows the filters kept
    for i, g in enumerate(map(by_id.get, ids)):
        if g is not None and keep[i]:
            best[g] = max(best.get(g, i), i, key=rank)
    mask = np.array([best.get(by_id.get(cid), i) == i for i, cid in enumerate(ids)], bool)
    return mask, {"filter": f"dedup: one per group ({label})", "threshold": None, "column": col,
                  "not_in_dedup_output": sum(1 for cid in ids if cid not in by_id)}  # fmt: skip


def rules_from_flags(rules: Rules, where: list[str], drop_bottom: list[str], drop_top: list[str], nulls: str | None) -> Rules:
    extra = [Filter(where=w) for w in where] + [Filter(drop_bottom=s) for s in drop_bottom] + [Filter(drop_top=s) for s in drop_top]
    if nulls:
        extra = [f.model_copy(update={"nulls": nulls}) for f in extra]
    return rules.model_copy(update={"filters": [*rules.filters, *extra]})


def run_select(source: str, out: str | Path, rules: Rules) -> dict:
    from curate.dataset import OUT, PARQUET, read_rows
    from curate.storage import refuse_inside_output

    table = read_rows(str(source), "-s", kinds=(OUT, PARQUET))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SelectError(f"-o {out}: exists and is not a directory")
    refuse_inside_output(str(out))  # an OutError: one line from the CLI
    subset, funnel = select(table, rules)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{SUBSET_FILE}.tmp"
    pq.write_table(subset, tmp, compression="zstd")
    tmp.replace(out / SUBSET_FILE)
    funnel["source"] = str(source)
    funnel["rules"] = rules.model_dump(mode="json")
    (out / FUNNEL_FILE).write_text(json.dumps(funnel, indent=2))
    return funnel
