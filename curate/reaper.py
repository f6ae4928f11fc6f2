"""Ends a local Ray's processes when the driver that started them dies, however it dies.

A SIGKILLed driver cannot run `ray.shutdown()`, and some of Ray's processes (its dashboard and
runtime-env agents) outlive the raylet. So a driver that starts a local Ray also starts this
reaper in its own session: it records every process descended from the driver (once a second,
from /proc, with start times so a reused pid is never mistaken for one of ours) and, when the
driver's pipe closes, kills the recorded processes that are still alive. Linux only (/proc);
elsewhere it is not started.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys


def _table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, start time) of every process now."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # the name may hold spaces and parentheses
        out[int(name)] = (int(fields[1]), fields[19])
    return out


def _descendants(root: int, table: dict[int, tuple[int, str]]) -> dict[int, str]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and child != os.getpid():
                found[child] = table[child][1]
                todo.append(child)
    return found


def main(driver: int) -> None:
    seen: dict[int, str] = {}
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 1.0)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # the driver's end closed: it exited or was killed
        seen.update(_descendants(driver, _table()))
    now = _table()
    for pid, started in seen.items():
        if pid in now and now[pid][1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


_started: subprocess.Popen | None = None


def start() -> None:
    """Start the reaper for this process (once)."""
    global _started
    if _started is not None or not os.path.isdir("/proc"):
        return
    # stdin is a pipe whose only writer is this process: EOF there means this process is gone
    _started = subprocess.Popen([sys.executable, "-m", "curate.reaper", str(os.getpid())], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]))
