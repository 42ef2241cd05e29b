"""The benchmark command works: ``python -m bench --quick`` writes JSON, markdown and plots.

Quick mode uses tiny counts and checks only that every section runs and reports (not timings).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("matplotlib", reason="the [bench] extra (matplotlib) is not installed")
pytest.importorskip("hypercorn", reason="the [mcp] extra is not installed")

from bench.http import summarize_py_spy  # noqa: E402
from bench.report import render  # noqa: E402
from bench.run import check_targets, run_million  # noqa: E402


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
    assert not http["errors"], http["errors"]
    s = http["summary"]
    for mode in ("sse", "json"):
        for metric in ("sessions_per_s", "calls_per_s"):
            fig = s[f"handshake_{mode}"][metric]
            assert all(fig["median"][k] > 0 for k in ("ours", "sdk", "ceiling")), (mode, metric)
            assert set(fig["of_ceiling"]) == {"ours", "sdk"}
        modern = s[f"modern_{mode}"]["calls_per_s"]["median"]
        assert all(modern[k] > 0 for k in ("handle", "no_handle", "sdk_stateless", "ceiling"))
        memory = s["memory_per_idle_session"][f"handshake_{mode}"]["median"]
        assert memory["ours"] > 0 and memory["sdk"] > 0, mode
    assert len(http["ratios"]) == 12
    # every server ran with the same collector setting
    assert len({tuple(info["gc_threshold"]) for info in http["servers"].values()}) == 1
    for name, profile in http["profiles"].items():
        assert profile["busy_seconds"] > 0 and profile["top"], name
        assert profile["cpu_us_per_call"] > 0, name
        assert abs(sum(profile["layers"].values()) - 1) < 1e-6, name
    assert http["profiles"]["ours sse calls"]["layers"]["ours (app + transport)"] > 0
    assert http["profiles"]["sdk sse calls"]["layers"]["SDK protocol (mcp)"] > 0

    handles = results["handles"]["sizes"]["1000"]["summary"]
    for op in ("open", "open_tool", "call", "close", "mass_expiry", "memory_rss"):
        assert handles[op]["ours"] > 0 and handles[op]["base"] > 0, op
        assert handles[op]["ratio"] == handles[op]["ours"] / handles[op]["base"], op

    targets = results["targets"]
    http_rows = [t for t in targets if t.get("section") == "http"]
    assert len([t for t in http_rows if t["met"] is not None]) == 12
    assert len([t for t in http_rows if "ceiling" in t["target"]]) == 6
    assert all(t["met"] is None for t in targets if t.get("section") == "million")
    markdown = (out / "results.md").read_text()
    for heading in (
        "## Targets",
        "## Core",
        "## Expiry precision",
        "## State handles",
        "## End to end",
        "### Where the time goes",
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


@pytest.mark.slow
def test_bench_durable_section_measures_every_store(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "durable", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "SQLite, synchronous=FULL" in proc.stderr  # the readable table
    results = json.loads((out / "results.json").read_text())
    durable = results["durable"]
    # Redis is skipped only without a server binary (the test harness finds one here).
    assert set(durable["stores"]) | set(durable["skipped"]) == {
        "sqlite-full",
        "sqlite-normal",
        "redis",
        "redis-aof",
    }
    assert {"sqlite-full", "sqlite-normal"} <= durable["stores"].keys()
    for kind, fig in durable["stores"].items():
        s = fig["summary"]
        assert set(s["save"]) == {"1", "8"}, kind
        for f in s["save"].values():
            assert f["save_us"] > 0 and f["call_us"] > 0, kind
            assert f["ratio"] == f["save_us"] / f["call_us"], kind
        assert s["passivate"]["durable_us"] > 0 and s["passivate"]["plain_us"] > 0, kind
        assert s["activate"]["activate_us"] > 0 and s["activate"]["create_us"] > 0, kind
    rows = [t for t in results["targets"] if t.get("section") == "durable"]
    assert len([t for t in rows if t["value"] is not None]) == 4 * len(durable["stores"])
    assert "call + ctx.save / call" in (out / "results.md").read_text()


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


def _million_results(million: dict[str, Any] | None) -> dict[str, Any]:
    results: dict[str, Any] = {
        "meta": {
            "date": "2026-12-01T12:00:00+00:00",
            "quick": True,
            "versions": {"python": "3.11"},
            "machine": {"cpus": 2, "cpu_model": "x", "platform": "linux", "load_avg_at_start": [0]},
            "seconds_total": 1.0,
        }
    }
    if million is not None:
        results["million"] = million
    results["targets"] = check_targets(results)
    return results


def test_report_without_sections_shows_pending_core_million_and_http_rows() -> None:
    results = _million_results(None)
    pending = [t for t in results["targets"] if t["value"] is None]
    assert {t["section"] for t in pending} == {"core", "http", "million"}
    markdown = render(results)
    assert "## Targets" in markdown and "pending: run `python -m bench --only million`" in markdown
    assert "pending: run `python -m bench --only core`" in markdown
    assert "## One million" not in markdown


def test_report_renders_a_million_section_and_checks_its_targets() -> None:
    million = {
        "n": 1_000_000,
        "gc": "freeze",
        "per_session_rss_bytes": 4000.0,
        "create_seconds": 75.0,
        "stall_idle_ms": 12.0,
        "stall_expiry_ms": 250.0,
        "early": 0,
        "lateness_s": {"p50": 0.003, "p99": 0.04, "p100": 0.09},
        "ops_1k": {"create": 20_000.0, "call": 15_000.0},
        "ops_1m": {"create": 30_000.0, "call": 45_000.0},
        "ops_ratio": {"create": 1.5, "call": 3.0},
    }
    results = _million_results(million)
    rows = {t["target"]: t for t in results["targets"] if t["section"] == "million"}
    assert rows["RSS per idle session <= 4.5 KB"]["met"] is True
    assert rows["1,000,000 sessions created in <= 60 s"]["met"] is False
    assert rows["longest event-loop stall while 1M expire at once <= 100 ms"]["met"] is False
    assert rows["no session expires early"]["met"] is True
    growth = rows["per-operation cost at 1M <= 2x the cost at 1k"]
    assert growth["value"] == 3.0 and growth["met"] is False  # the worst operation
    assert rows["longest event-loop stall while 1M idle <= 50 ms"]["met"] is True
    markdown = render(results)
    assert "## One million live sessions" in markdown
    assert "| live sessions | 1,000,000 |" in markdown
    assert "| RSS per idle session | 3.91 KB (4,000 B) |" in markdown
    assert "| lateness | p50 3 ms, p99 40 ms, p100 90 ms |" in markdown
    assert "| call | 15.0 µs | 45.0 µs | 3.00x |" in markdown
    assert "| gc | freeze |" in markdown
    assert "**missed**" in markdown


def test_million_section_is_skipped_while_its_module_does_not_exist(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_million({"quick": True}, module="bench.no_such_section") is None
    assert "no module bench.no_such_section yet: section skipped" in capsys.readouterr().err


def test_py_spy_samples_are_grouped_by_layer(tmp_path: Path) -> None:
    site = "/venv/lib/python3.11/site-packages"
    loop = f"run ({site}/trio/_core/_run.py:1)"
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "\n".join(
            [
                # waiting in epoll: idle, left out
                f"{loop};get_events ({site}/trio/_core/_io_epoll.py:2) 50",
                # a socket send: its own layer
                f"{loop};_nonblocking_helper ({site}/trio/_socket.py:3) 10",
                # a stdlib frame goes to the layer that called it
                f"{loop};handle (/src/supervisor/mcp/_http.py:4);"
                "dumps (/usr/lib/python3.11/json/__init__.py:5) 20",
                f"{loop};parse ({site}/h11/_util.py:6) 10",
            ]
        )
    )
    summary = summarize_py_spy(raw, calls=10)
    assert summary["samples"] == 40 and summary["idle_seconds"] == 0.05
    assert summary["layers"] == {
        "ours (app + transport)": 0.5,
        "socket syscalls": 0.25,
        "hypercorn / h11": 0.25,
    }
    assert summary["busy_us_per_call"] == 4000.0  # 40 samples at 1,000/s over 10 calls
    assert summary["top"][0]["layer"] == "ours (app + transport) (via caller)"
