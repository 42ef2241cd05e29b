#!/usr/bin/env python3
"""The long reliability run: load, leak and soak tests with figures, bounded in time.

    .venv/bin/python scripts/soak.py            # full size, at most 10 minutes
    .venv/bin/python scripts/soak.py --reduced  # CI size, at most 3 minutes

Runs ``pytest tests/reliability --soak`` with ``SOAK=1`` (or ``SOAK=reduced``): every test of
the reliability suite, the fast ones at their larger sizes and the ``@pytest.mark.soak`` ones.
Progress lines stream as the tests run; at the end it prints a table of the figures each test
measured and writes them as JSON. Only the full run of every test (``make soak``) writes the
tracked ``docs/reliability/figures.json``; a reduced run (part of ``make test``) or a run of a
selection (``-k``) writes to a file in the system's temporary directory, outside the work tree,
unless ``--figures PATH`` says where. The whole run is killed if it exceeds ``--timeout`` (the
exit status is then 124). Exits with pytest's status otherwise.

Expected warnings (the thousands of ``refused a new session`` of the flood tests) are counted,
not printed: one count line at the end. Every other warning or error is printed as it happens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "docs" / "reliability" / "figures.json"
SCRATCH = Path(tempfile.gettempdir()) / "trio-session-supervisor-soak"


def figures_path(*, reduced: bool, selected: bool) -> Path:
    """Where a run writes its figures when ``--figures`` is not given.

    Only a full run of every test replaces the tracked figures; any other run writes outside
    the work tree, so ``make test`` leaves ``git status`` clean.
    """
    if not reduced and not selected:
        return FIGURES
    return SCRATCH / ("figures-reduced.json" if reduced else "figures-full-selection.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--reduced", action="store_true", help="CI size (about 3 minutes)")
    parser.add_argument(
        "--timeout", type=float, default=None, help="kill the run after this many seconds"
    )
    parser.add_argument("-k", dest="select", default=None, help="only tests matching (pytest -k)")
    parser.add_argument(
        "--figures",
        type=Path,
        default=None,
        help=f"where to write figures (full run: {FIGURES.relative_to(REPO)}; "
        f"reduced or -k: {SCRATCH})",
    )
    args = parser.parse_args(argv)
    target: Path = args.figures or figures_path(
        reduced=args.reduced, selected=args.select is not None
    )
    mode = "reduced" if args.reduced else "full"
    timeout = args.timeout or (240.0 if args.reduced else 600.0)

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "figures.json"
        env = {
            **os.environ,
            "SOAK": "reduced" if args.reduced else "1",
            "RELIABILITY_FIGURES": str(raw),
            "PYTHONUNBUFFERED": "1",
        }
        command = [
            sys.executable,
            "-m",
            "pytest",
            "tests/reliability",
            "--soak",
            "-s",
            "-v",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:logging",
            "-W",
            "ignore::pytest.PytestUnraisableExceptionWarning",
        ]
        if args.select:
            command += ["-k", args.select]
        print(f"==> soak ({mode}), bounded to {timeout:.0f} s: {' '.join(command[2:])}", flush=True)
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"==> soak exceeded {timeout:.0f} s: stopping it", flush=True)
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            status = 124
        duration = time.monotonic() - started
        figures: dict[str, dict[str, Any]] = json.loads(raw.read_text()) if raw.exists() else {}

    print_table(figures)
    document = {
        "mode": mode,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(duration, 1),
        "exit_status": status,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "tests": figures,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    print(f"==> {mode} soak finished in {duration:.0f} s with status {status}", flush=True)
    print(f"==> figures written to {target}", flush=True)
    return status


def print_table(figures: dict[str, dict[str, Any]]) -> None:
    if not figures:
        print("(no figures recorded)")
        return
    width = max(len(_short(test)) for test in figures)
    print()
    print(f"{'test':<{width}}  figures")
    print(f"{'-' * width}  {'-' * 60}")
    for test, values in figures.items():
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items() if k != "mode")
        print(f"{_short(test):<{width}}  {shown}")
    print()


def _short(nodeid: str) -> str:
    return nodeid.removeprefix("tests/reliability/")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return "{" + " ".join(f"{k}:{v}" for k, v in value.items()) + "}"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
