"""Regenerate the README's screenshot, ``reports/screenshot.png``, from today's report.

    python docs/screenshot.py                      # every claim on the GPT-2 organism, all 600 prompts
    python docs/screenshot.py --prompts 96         # the first 96 prompts (a loaded machine)
    python docs/screenshot.py --cache-dir .mechclaims-cache   # a private result cache

Runs ``pytest claims/`` on the organism (every claim, behavioural ones included) in a temporary
working directory, so the report shows no path of this machine (``display_path``: the organism's
files as ``<fixtures>/...``, the prompt subset as ``prompts.jsonl``), then renders the HTML with
headless Chromium, as ``tests/test_claims.py::test_report_opens_in_headless_chromium`` does.
Refuses to write a screenshot of a report that carries the checkout's or the home directory's path.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The flags of tests/test_claims.py (headless, no network, no first-run UI).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
WINDOW = "1200,1500"


def run_claims(work: Path, prompts: int | None, cache_dir: str | None) -> Path:
    """``pytest claims/`` on the organism with ``work`` as the working directory; the report path."""
    args = [sys.executable, "-m", "pytest", str(REPO / "claims"), "--report", "claims.html", "-q", "-p", "no:randomly"]
    if prompts:
        lines = (REPO / "fixtures" / "organism" / "gpt2" / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
        (work / "prompts.jsonl").write_text("\n".join(lines[:prompts]) + "\n", encoding="utf-8")
        args += ["--prompts", "prompts.jsonl"]
    if cache_dir:
        args += ["--cache-dir", str(Path(cache_dir).resolve())]
    res = subprocess.run(args, cwd=work, capture_output=True, text=True)
    # 0: every claim passed; 1: some claims failed (the organism's verdict, not an error)
    if res.returncode not in (0, 1):
        raise SystemExit(f"pytest claims/ exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    print(res.stdout.strip().splitlines()[-1], file=sys.stderr)
    return work / "claims.html"


def check_no_machine_paths(report: Path, work: Path) -> None:
    text = report.read_text(encoding="utf-8")
    leaked = [str(p) for p in (REPO, work, Path.home()) if str(p) != "/" and str(p) in text]
    if leaked:
        raise SystemExit(f"the report {report} shows this machine's paths {leaked}; no screenshot written.")


def screenshot(report: Path, out: Path, work: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium is not installed (Debian: apt-get install chromium).")
    out.parent.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={work / 'profile'}",
                          f"--window-size={WINDOW}", f"--screenshot={out.resolve()}", report.as_uri()],
                         capture_output=True, text=True, timeout=120)
    if res.returncode != 0 or not out.is_file():
        raise SystemExit(f"chromium failed ({res.returncode}):\n{res.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=None, metavar="N",
                   help="the first N organism prompts (default: all 600)")
    p.add_argument("--cache-dir", default=None, help="result cache (default: mechclaims' own)")
    p.add_argument("--out", default=str(REPO / "reports" / "screenshot.png"), help="the PNG to write")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mechclaims-shot-") as tmp:
        work = Path(tmp)
        report = run_claims(work, a.prompts, a.cache_dir)
        check_no_machine_paths(report, work)
        screenshot(report, Path(a.out), work)
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
