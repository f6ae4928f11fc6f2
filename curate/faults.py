"""Fault injection for the crash tests: `CURATE_FAULT=point[@n]` SIGKILLs the process the n-th
time (default the first) it reaches `point`. With `CURATE_FAULT_ONCE=PATH` only the first process
to get there dies (it creates PATH exclusively), so a retried Ray task then succeeds. Unset, a
fault point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def fault(point: str) -> None:
    spec = os.environ.get("CURATE_FAULT")
    if not spec:
        return
    name, _, nth = spec.partition("@")
    if name != point:
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] != int(nth or 1):
        return
    once = os.environ.get("CURATE_FAULT_ONCE")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)


def hang(point: str, subject: str = "") -> None:
    """`CURATE_FAULT=hang:point[:text]`: block forever at `point` (for subjects containing `text`),
    as a stuck demuxer would."""
    kind, _, rest = os.environ.get("CURATE_FAULT", "").partition(":")
    name, _, text = rest.partition(":")
    if kind != "hang" or name != point or text not in subject:
        return
    import time

    while True:
        time.sleep(3600)
