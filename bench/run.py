"""Run every benchmark and write ``results.json``, ``results.md`` and PNG plots into ``--out``.

``python -m bench [--quick] [--out docs/bench] [--skip seed,http | --only handles]``

Each configuration runs in a fresh subprocess (`bench.core`, `bench.handles`, `bench.http`, ``node
bench/seed/run.js``); subject and baseline run in the same process (core) or the same run (HTTP),
interleaved, and every figure is a median over the repetitions. ``--quick`` uses tiny counts and
only checks that everything works (its timings mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from . import core
from ._util import median

ROOT = Path(__file__).resolve().parent.parent
SEED_RUN = Path(__file__).resolve().parent / "seed" / "run.js"

# Targets: (section, key, limit, description). Ratios are ours / baseline, "<=" unless noted.
CORE_TARGETS = {
    "create": 1.3,
    "call": 1.3,
    "lookup": 1.5,
    "mass_expiry": 1.3,
    "memory_rss": 1.1,
    "memory_tracemalloc": 1.1,
}
GROWTH_TARGET = 1.5
EXPIRY_MARGIN = 0.005
HTTP_TARGETS = {"sessions_per_s": 1.2, "calls_per_s": 1.2, "memory_per_idle_session": 1.0}


def _profile(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "sizes": [1000],
            "ops": {1000: (3, 100)},
            "mass": {1000: 1},
            "memory_reps": {1000: 1},
            "memory_methods": ["rss"],
            "fanout": {"reps": 1, "batch": 50, "ks": "1,10"},
            "expiry": {"n": 300, "reps": 1},
            "seed": {"sizes": "1000", "reps": 2, "expiry_n": 300, "interval_ms": 300},
            "http": {"reps": 1, "sessions": 6, "calls": 12, "idle": 6, "mem_reps": 1, "limit": 30},
            "handles": {
                "sizes": [1000],
                "ops": {1000: (2, 100)},
                "mass": {1000: 1},
                "memory_reps": {1000: 1},
                "memory_methods": ["rss"],
            },
        }
    return {
        "sizes": [1000, 10000, 100000],
        "ops": {1000: (15, 100), 10000: (11, 1000), 100000: (9, 1000)},
        "mass": {1000: 7, 10000: 4, 100000: 2},
        "memory_reps": {1000: 3, 10000: 2, 100000: 1},
        "memory_methods": ["rss", "tracemalloc"],
        "fanout": {"reps": 9, "batch": 500, "ks": "1,10,100"},
        "expiry": {"n": 10000, "reps": 3},
        "seed": {"sizes": "1000,10000,100000", "reps": 9, "expiry_n": 10000, "interval_ms": 1000},
        "http": {
            "reps": 5,
            "sessions": 300,
            "calls": 1500,
            "idle": 500,
            "mem_reps": 3,
            "limit": 90,
        },
        "handles": {
            "sizes": [1000, 10000, 100000],
            "ops": {1000: (15, 100), 10000: (11, 1000), 100000: (7, 1000)},
            "mass": {1000: 7, 10000: 4, 100000: 2},
            "memory_reps": {1000: 3, 10000: 2, 100000: 1},
            "memory_methods": ["rss", "tracemalloc"],
        },
    }


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _py(*args: str, timeout: float = 900) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("trio", "attrs", "mcp", "hypercorn", "anyio", "trio-session-supervisor"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    node = shutil.which("node")
    if node:
        versions["node"] = subprocess.run(
            [node, "--version"], capture_output=True, text=True
        ).stdout.strip()
    with contextlib.suppress(OSError):
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        if rev:  # none when run from an exported tree
            versions["git"] = rev
    return versions


def _machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "load_avg_at_start": os.getloadavg(),
    }


# -- sections ----------------------------------------------------------------------------------


def run_core(prof: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"sizes": {}, "fanout": None}
    for n in prof["sizes"]:
        reps, batch = prof["ops"][n]
        t0 = time.perf_counter()
        ops = _py("bench.core", "ops", "--n", str(n), "--reps", str(reps), "--batch", str(batch))
        mass = _py("bench.core", "mass-expiry", "--n", str(n), "--reps", str(prof["mass"][n]))
        raw = {**ops["raw"], **mass["raw"]}
        memory: dict[str, dict[str, list[float]]] = {}
        for method in prof["memory_methods"]:
            key = f"memory_{method}"
            memory[key] = {"ours": [], "bare": []}
            for rep in range(prof["memory_reps"][n] if method == "rss" else 1):
                for kind in ("ours", "bare") if rep % 2 == 0 else ("bare", "ours"):
                    r = _py(
                        "bench.core", "memory", "--n", str(n), "--kind", kind, "--method", method
                    )
                    memory[key][kind].append(r["bytes_per_session"])
        raw.update(memory)
        out["sizes"][str(n)] = {
            "n": n,
            "reps": reps,
            "batch": batch,
            "raw": raw,
            "extra": ops["extra"],
            "summary": core.summarize(raw),
            "create_bare_scoped": median(ops["extra"]["create_bare_scoped"]),
        }
        s = out["sizes"][str(n)]["summary"]
        _log(
            f"  core n={n}: "
            + ", ".join(f"{op} {v['ratio']:.2f}x" for op, v in s.items())
            + f" ({time.perf_counter() - t0:.0f} s)"
        )
    f = prof["fanout"]
    fan = _py(
        "bench.core",
        "fanout",
        "--reps",
        str(f["reps"]),
        "--batch",
        str(f["batch"]),
        "--ks",
        f["ks"],
    )
    fan["summary"] = core.summarize(fan["raw"])
    out["fanout"] = fan
    # Cost growth: per-operation cost at the largest size / at the smallest.
    sizes = [str(n) for n in prof["sizes"]]
    lo, hi = sizes[0], sizes[-1]
    growth = {}
    for op in out["sizes"][lo]["summary"]:
        a, b = out["sizes"][lo]["summary"][op], out["sizes"][hi]["summary"][op]
        growth[op] = {
            "ours": b["ours"] / a["ours"],
            "bare": b["bare"] / a["bare"],
        }
    out["growth"] = {"from": int(lo), "to": int(hi), "ops": growth}
    return out


def run_expiry(prof: dict[str, Any]) -> dict[str, Any]:
    e = prof["expiry"]
    result: dict[str, Any] = _py(
        "bench.core", "expiry", "--n", str(e["n"]), "--reps", str(e["reps"])
    )
    return result


def run_seed(prof: dict[str, Any]) -> dict[str, Any] | None:
    node = shutil.which("node")
    if node is None:
        _log("  node not found: seed section skipped")
        return None
    s = prof["seed"]
    out = subprocess.run(
        [
            node,
            "--expose-gc",
            str(SEED_RUN),
            "--sizes",
            s["sizes"],
            "--reps",
            str(s["reps"]),
            "--expiry-n",
            str(s["expiry_n"]),
            "--interval-ms",
            str(s["interval_ms"]),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    for size in result["sizes"]:
        size["summary"] = {op: median(v) for op, v in size["raw"].items()}
        size["summary"]["sweep_all_due_per_session"] = median(size["sweep_all_due_per_session"])
    return result


def run_handles(prof: dict[str, Any]) -> dict[str, Any]:
    """State handles beside plain core sessions (`bench.handles`), per live-handle count."""
    from .handles import summarize

    h = prof["handles"]
    out: dict[str, Any] = {"sizes": {}}
    for n in h["sizes"]:
        reps, batch = h["ops"][n]
        t0 = time.perf_counter()
        ops = _py("bench.handles", "ops", "--n", str(n), "--reps", str(reps), "--batch", str(batch))
        mass = _py("bench.handles", "mass-expiry", "--n", str(n), "--reps", str(h["mass"][n]))
        raw = {**ops["raw"], **mass["raw"]}
        for method in h["memory_methods"]:
            key = f"memory_{method}"
            raw[key] = {"ours": [], "base": []}
            for rep in range(h["memory_reps"][n] if method == "rss" else 1):
                for kind in ("ours", "base") if rep % 2 == 0 else ("base", "ours"):
                    r = _py(
                        "bench.handles", "memory", "--n", str(n), "--kind", kind, "--method", method
                    )
                    raw[key][kind].append(r["bytes_per_session"])
        out["sizes"][str(n)] = {
            "n": n,
            "reps": reps,
            "batch": batch,
            "mass_reps": h["mass"][n],
            "raw": raw,
            "summary": summarize(raw),
        }
        s = out["sizes"][str(n)]["summary"]
        _log(
            f"  handles n={n}: "
            + ", ".join(f"{op} {v['ratio']:.2f}x" for op, v in s.items())
            + f" ({time.perf_counter() - t0:.0f} s)"
        )
    return out


def run_http_section(prof: dict[str, Any]) -> dict[str, Any]:
    from .http import run_http

    h = prof["http"]
    return run_http(
        reps=h["reps"],
        sessions=h["sessions"],
        calls=h["calls"],
        idle=h["idle"],
        mem_reps=h["mem_reps"],
        limit=h["limit"],
        log=_log,
    )


# -- targets -----------------------------------------------------------------------------------


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    core_res = results.get("core")
    if core_res:
        for n, size in core_res["sizes"].items():
            for op, limit in CORE_TARGETS.items():
                if op in size["summary"]:
                    ratio = size["summary"][op]["ratio"]
                    checks.append(
                        {
                            "target": f"{op} at {int(n):,} <= {limit}x bare",
                            "value": ratio,
                            "met": ratio <= limit,
                        }
                    )
        g = core_res["growth"]
        for op, v in g["ops"].items() if g["to"] != g["from"] else ():
            checks.append(
                {
                    "target": (
                        f"{op}: cost at {g['to']:,} <= {GROWTH_TARGET}x cost at {g['from']:,}"
                    ),
                    "value": v["ours"],
                    "met": v["ours"] <= GROWTH_TARGET,
                }
            )
    exp = results.get("expiry")
    if exp:
        s = exp["summary"]["ours"]
        limit = exp["deadline_slack"] + EXPIRY_MARGIN
        checks.append({"target": "expiry never early", "value": s["early"], "met": s["early"] == 0})
        p99 = median([r["p99"] for r in exp["per_rep"]["ours"]])
        checks.append(
            {
                "target": f"expiry p99 lateness <= deadline_slack + 5 ms ({limit * 1000:.0f} ms)",
                "value": p99,
                "met": p99 <= limit,
            }
        )
    http = results.get("http")
    if http:
        for name, limit in HTTP_TARGETS.items():
            ratio = http["summary"][name]["ratio"]
            met = ratio <= limit if name.startswith("memory") else ratio >= limit
            sign = "<=" if name.startswith("memory") else ">="
            checks.append(
                {"target": f"HTTP {name} {sign} {limit}x SDK manager", "value": ratio, "met": met}
            )
    return checks


# -- entry point -------------------------------------------------------------------------------


SECTIONS = ("core", "expiry", "seed", "handles", "http")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks it works")
    parser.add_argument("--out", default="docs/bench", help="output directory (default docs/bench)")
    parser.add_argument(
        "--skip",
        default="",
        help=f"comma-separated sections to skip: {','.join(SECTIONS)}",
    )
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated sections to run, skipping the rest: {','.join(SECTIONS)}",
    )
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    only = {s for s in args.only.split(",") if s}
    unknown = (skip | only) - set(SECTIONS)
    if unknown:
        parser.error(
            f"unknown sections: {', '.join(sorted(unknown))} (known: {', '.join(SECTIONS)})"
        )
    if only:
        skip |= set(SECTIONS) - only
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    prof = _profile(args.quick)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "quick": args.quick,
            "versions": _versions(),
            "machine": _machine(),
        },
        "profile": {
            k: v if not isinstance(v, dict) else {str(a): b for a, b in v.items()}
            for k, v in prof.items()
        },
    }
    sections = [
        ("core", run_core),
        ("expiry", run_expiry),
        ("seed", run_seed),
        ("handles", run_handles),
        ("http", run_http_section),
    ]
    for name, fn in sections:
        if name in skip:
            continue
        t0 = time.perf_counter()
        _log(f"== {name}")
        results[name] = fn(prof)
        results["meta"][f"seconds_{name}"] = round(time.perf_counter() - t0, 1)
        _log(f"   {name} took {time.perf_counter() - t0:.0f} s")
    results["targets"] = check_targets(results)
    results["meta"]["seconds_total"] = round(time.perf_counter() - started, 1)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    from .report import render

    (out_dir / "results.md").write_text(render(results))
    if not args.no_plots:
        from .plots import plot_all

        plot_all(results, out_dir)
    elapsed = time.perf_counter() - started
    _log(f"wrote {out_dir}/results.json, results.md and plots in {elapsed:.0f} s")
    return 0
