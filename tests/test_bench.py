"""The benchmark command works: ``python -m bench --quick`` writes JSON, markdown and plots.

Quick mode uses tiny counts and checks only that every section runs and reports (not timings).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("matplotlib", reason="the [bench] extra (matplotlib) is not installed")
pytest.importorskip("hypercorn", reason="the [mcp] extra is not installed")


@pytest.mark.slow
def test_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["quick"] is True
    assert {"versions", "machine", "date"} <= results["meta"].keys()

    core = results["core"]
    summary = core["sizes"]["1000"]["summary"]
    for op in ("create", "close", "lookup", "touch", "send", "call", "mass_expiry", "memory_rss"):
        assert summary[op]["ours"] > 0 and summary[op]["bare"] > 0, op
    assert set(core["fanout"]["summary"]) == {"fanout_k1", "fanout_k10"}
    assert core["growth"]["ops"]

    expiry = results["expiry"]["summary"]["ours"]
    assert expiry["early"] == 0  # never early, even in quick mode
    assert expiry["min"] >= 0

    if shutil.which("node"):
        seed = results["seed"]
        assert seed["sizes"][0]["summary"]["create"] > 0
        assert seed["expiry"]["max_ms"] > 0

    http = results["http"]
    for name in ("sessions_per_s", "calls_per_s", "memory_per_idle_session"):
        assert http["summary"][name]["ours"] > 0 and http["summary"][name]["sdk"] > 0, name
    assert not http["errors"]["ours"] and not http["errors"]["sdk"], http["errors"]

    handles = results["handles"]["sizes"]["1000"]["summary"]
    for op in ("open", "open_tool", "call", "close", "mass_expiry", "memory_rss"):
        assert handles[op]["ours"] > 0 and handles[op]["base"] > 0, op
        assert handles[op]["ratio"] == handles[op]["ours"] / handles[op]["base"], op

    assert results["targets"]
    markdown = (out / "results.md").read_text()
    for heading in (
        "## Targets",
        "## Core",
        "## Expiry precision",
        "## State handles",
        "## End to end",
    ):
        assert heading in markdown
    pngs = (
        "core_ratios.png",
        "core_growth.png",
        "fanout.png",
        "expiry.png",
        "handles.png",
        "http.png",
    )
    for png in pngs:
        assert (out / png).stat().st_size > 1000, png


@pytest.mark.slow
def test_bench_only_runs_the_named_sections(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "handles", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert not {"core", "expiry", "seed", "http"} & results.keys()
    assert results["meta"]["seconds_handles"] > 0
    summary = results["handles"]["sizes"]["1000"]["summary"]
    assert summary["call"]["ours"] > 0 and summary["call"]["base"] > 0
    markdown = (out / "results.md").read_text()
    assert "## State handles" in markdown and "## Core" not in markdown
    assert (out / "handles.png").stat().st_size > 1000
    assert not (out / "core_ratios.png").exists()


def test_bench_refuses_an_unknown_section(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "handle", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "unknown sections: handle" in proc.stderr
    assert not (tmp_path / "results.json").exists()
