"""Scoring detected cuts against ground truth (used by tests and bench/)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CutScore:
    tp: int
    fp: int
    fn: int
    ignored: int  # detections inside a gradual transition or a black gap: not hard-cut errors

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: "CutScore") -> "CutScore":
        return CutScore(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.ignored + other.ignored)


def score_cuts(
    detected: list[int],
    truth: list[int],
    tolerance: int = 2,
    ignore: list[tuple[int, int]] = (),
) -> CutScore:
    """Greedy one-to-one matching of detections to true cuts within +-tolerance frames.

    Unmatched detections inside an `ignore` range (inclusive, widened by the tolerance) are not
    counted: the truth lists fades and dissolves as ranges, not as hard cuts.
    """
    unmatched = sorted(truth)
    tp = fp = ignored = 0
    for d in sorted(detected):
        best = min(unmatched, key=lambda t: abs(t - d), default=None)
        if best is not None and abs(best - d) <= tolerance:
            unmatched.remove(best)
            tp += 1
        elif any(lo - tolerance <= d <= hi + tolerance for lo, hi in ignore):
            ignored += 1
        else:
            fp += 1
    return CutScore(tp=tp, fp=fp, fn=len(unmatched), ignored=ignored)


def truth_ignore_zones(entry: dict) -> list[tuple[int, int]]:
    """Ranges of a truth.json entry where a detection is neither right nor wrong: gradual
    transitions, the black gaps of fades (a cut anywhere in them is a fair boundary), and what
    the truth itself calls ambiguous (jump cuts, picture-in-picture inserts)."""
    zones = [tuple(g["frames"]) for g in entry.get("gradual", [])]
    zones += [tuple(s["frames"]) for s in entry.get("segments", []) if s.get("content") == "black"]
    zones += [(f, f) for f in entry.get("jump_cuts", [])]
    for event in entry.get("overlay_events", {}).values():
        zones.append(tuple(event) if isinstance(event, list) else (event, event))
    return sorted(zones)
