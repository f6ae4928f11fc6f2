"""`curate browse` at scale: how long a control change takes on a generated OUT, end to end in
headless Chromium (the input event, the request, the server's funnel + histograms + one page of
clips, the page drawn), against the loop it replaces: `curate select` on the same rules (read OUT,
filter, write the subset and funnel.json), the peer measured in the same run.

Also the server's start (read OUT, bin every column) and its answer alone (Browser.view, no HTTP).
Run: python bench/browse.py [--rows 100000 1000000] [--changes 30]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000])
    ap.add_argument("--changes", type=int, default=30)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from datatools.browse import Browser
    from datatools.select import Filter, Rules
    from tests.browse_out import scores, write_out

    env = {**os.environ, "CI": "true", "PYTHONPATH": str(ROOT)}
    for n in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            out = write_out(Path(tmp) / "out", scores(n, seed=1))
            t0 = time.perf_counter()
            b = Browser(str(out), Rules(), Path(tmp) / "r.yaml")
            start_s = time.perf_counter() - t0
            rules = Rules(filters=[Filter(where="flow_mean >= 1.2"), Filter(drop_top="ocr_area_ratio=10%"),
                                   Filter(where="camera_motion != 'shaky'"), Filter(drop_bottom="aesthetic_score=25%", nulls="drop")])  # fmt: skip
            body = {"filters": [f.model_dump(exclude_none=True) for f in rules.filters], "focus": 0}
            views = []
            for _ in range(10):
                t0 = time.perf_counter()
                b.view(body)
                views.append(time.perf_counter() - t0)
            rules_file = Path(tmp) / "rules.yaml"
            rules_file.write_text("filters:\n  - where: flow_mean >= 1.2\n  - drop_top: ocr_area_ratio=10%\n"
                                  "  - where: camera_motion != 'shaky'\n  - drop_bottom: aesthetic_score=25%\n    nulls: drop\n")  # fmt: skip
            selects = []
            for k in range(3):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "curate_cli.main", "select", str(rules_file), "-s", str(out), "-o",
                                str(Path(tmp) / f"sub{k}")], check=True, capture_output=True, env=env)  # fmt: skip
                selects.append(time.perf_counter() - t0)
            proc = subprocess.Popen([sys.executable, "-m", "curate_cli.main", "browse", str(out), "--rules", str(rules_file),
                                     "--save", str(Path(tmp) / "saved.yaml"), "--port", "0"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
            url = next(m.group(1) for line in proc.stdout if (m := re.search(r"(http://127\.0\.0\.1:\d+/)", line)))
            changes = []
            try:
                with sync_playwright() as p:
                    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.goto(url)
                    ready = "window.changes > 0 && window.rendered === window.changes"
                    page.wait_for_function(ready)
                    page.focus('.control[data-col="flow_mean"] input.lo')
                    for i in range(args.changes):
                        t0 = time.perf_counter()
                        page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
                        page.wait_for_function(ready, polling="raf")
                        changes.append(time.perf_counter() - t0)
                    browser.close()
            finally:
                proc.kill()
                proc.wait()
            med = lambda xs: float(np.median(xs))  # noqa: E731
            print(f"{n} rows: server start {start_s:.2f} s; view alone median {1000 * med(views):.0f} ms; "
                  f"control change in Chromium median {1000 * med(changes):.0f} ms, p95 {1000 * float(np.percentile(changes, 95)):.0f} ms, "
                  f"max {1000 * max(changes):.0f} ms; `curate select` median {med(selects):.2f} s; "
                  f"change / select {med(changes) / med(selects):.3f}x", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
