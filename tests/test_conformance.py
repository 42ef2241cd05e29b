"""Run the official MCP conformance suite (``@modelcontextprotocol/conformance``) against us.

Two versions of the suite run, side by side (``bash scripts/setup-conformance.sh`` installs both,
pinned, with a pinned Node 22, into ``.tools/conformance/``):

* **0.1.16**, the stable line (the handshake era): its *active* scenarios are asserted and its
  *pending* ones printed for information;
* **0.2.0-alpha.12**, the newest published (adds the sessionless 2026-07-28 era, input-required
  results, the tasks extension, ...): every server scenario (``--suite all``, 65) is asserted.

Without the install the test is skipped, except under CI (``CI`` set), where a missing install is
a failure.

For each suite version both *targets* serve the fixture ``tests/conformance/server.py``, each
from its own runner subprocess on a free loopback port, at the same time: ``supervisor`` (our
adapter, ``supervisor.mcp.serve_http``, the server under test) and ``sdk`` (the SDK's own
session manager, the reference). The test reads the per-scenario ``checks.json`` files and
asserts, for each target, that every scenario passes except those listed in the version's
baseline (``baseline.json`` for 0.1.16, ``baseline-alpha.json`` for the alpha); a baseline entry
that passes is stale and fails the test too (as the suite's own ``--expected-failures`` does).
It also asserts the property the reference is kept for: every scenario the SDK's reference
passes passes on ours.

A baseline maps a scenario name to the reason it is expected to fail, either for every target
(``"name": "reason"``) or for some (``"name": {"reason": "...", "targets": ["sdk"]}``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent
CONFORMANCE_DIR = ROOT / "tests" / "conformance"
BIN = ROOT / ".tools" / "conformance" / "bin"

SERVER_START_TIMEOUT = 30.0
SUITE_TIMEOUT = 300.0  # a full run takes ~2 s (0.1.16) or ~10 s (alpha); this bounds a hung server
MAX_SESSIONS = 100  # either suite opens fewer than 50 sessions and never deletes them

URL_LINE = re.compile(r"^CONFORMANCE_SERVER_URL=(\S+)\s*$")
RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")
SUITE_HEADER = re.compile(r"Running (?P<suite>\w+) suite \((?P<count>\d+) scenarios\)")


@dataclass(frozen=True)
class SuiteVersion:
    """One installed version of the suite: its launcher, what is asserted, its baseline."""

    version: str
    launcher: Path
    baseline: Path
    asserted: str  # the --suite whose scenarios are asserted
    informative: tuple[str, ...] = ()  # further --suite runs, printed only


STABLE = SuiteVersion(
    "0.1.16", BIN / "conformance", CONFORMANCE_DIR / "baseline.json", "active", ("pending",)
)
ALPHA = SuiteVersion(
    "0.2.0-alpha.12", BIN / "conformance-alpha", CONFORMANCE_DIR / "baseline-alpha.json", "all"
)
SUITES = [STABLE, ALPHA]


@dataclass(frozen=True)
class Target:
    """A way of serving the conformance fixture: a runner script and its arguments."""

    name: str
    runner: Path
    args: tuple[str, ...] = ()

    def command(self) -> list[str]:
        return [sys.executable, str(self.runner), "--port", "0", *self.args]


# Our adapter (supervisor.mcp.serve_http: one supervised session actor per MCP session) is the
# server under test; the SDK's own StreamableHTTPSessionManager serving the same fixture is the
# reference.
SUPERVISOR_TARGET = Target(
    "supervisor",
    CONFORMANCE_DIR / "run_supervised_server.py",
    ("--max-sessions", str(MAX_SESSIONS)),
)
SDK_TARGET = Target(
    "sdk",
    CONFORMANCE_DIR / "run_sdk_server.py",
    ("--max-sessions", str(MAX_SESSIONS)),
)
TARGETS = [SUPERVISOR_TARGET, SDK_TARGET]


@dataclass
class ScenarioResult:
    name: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    missing: bool = False

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if c.get("status") == "FAILURE"]

    @property
    def passed(self) -> bool:
        return not self.missing and not self.failures

    def describe_failures(self) -> str:
        if self.missing:
            return f"{self.name}: no checks.json written"
        lines = [f"{self.name}:"]
        for check in self.failures:
            lines.append(f"    {check.get('id')}: {check.get('errorMessage', '(no message)')}")
        return "\n".join(lines)


@dataclass
class SuiteRun:
    suite: str
    returncode: int
    output: str
    results: dict[str, ScenarioResult]
    announced: int | None

    def summary(self) -> str:
        passed = sum(r.passed for r in self.results.values())
        checks = sum(len(r.checks) for r in self.results.values())
        return (
            f"{self.suite} suite: {passed}/{len(self.results)} scenarios passed ({checks} checks)"
        )


@dataclass
class TargetRun:
    """What one target did under one suite version."""

    target: Target
    url: str = ""
    asserted: SuiteRun | None = None
    informative: list[SuiteRun] = field(default_factory=list)
    server_exit: int | None = None
    server_log: str = ""
    seconds: float = 0.0


def load_baseline(path: Path, target: str) -> dict[str, str]:
    """Scenario -> reason, for the entries of the baseline file that apply to ``target``."""
    raw: dict[str, Any] = json.loads(path.read_text())
    baseline: dict[str, str] = {}
    for scenario, entry in raw.items():
        if isinstance(entry, str):
            baseline[scenario] = entry
        elif isinstance(entry, dict):
            targets = entry.get("targets")
            if targets is None or target in targets:
                baseline[scenario] = str(entry.get("reason", ""))
        else:
            raise ValueError(f"{path.name}: bad entry for {scenario!r}: {entry!r}")
    return baseline


def require_installed(launcher: Path) -> Path:
    """The installed suite's launcher; skips (or, under CI, fails) when it is not installed."""
    if launcher.is_file() and os.access(launcher, os.X_OK):
        return launcher
    message = (
        f"MCP conformance suite not installed ({launcher.relative_to(ROOT)} is missing): "
        "run `bash scripts/setup-conformance.sh`"
    )
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set, so a missing install is an error)")
    pytest.skip(message)


def read_results(output_dir: Path) -> dict[str, ScenarioResult]:
    results: dict[str, ScenarioResult] = {}
    for entry in sorted(output_dir.iterdir()):
        match = RESULT_DIR.match(entry.name)
        if not entry.is_dir() or match is None:
            continue
        name = match["scenario"]
        checks_file = entry / "checks.json"
        if checks_file.is_file():
            results[name] = ScenarioResult(name, json.loads(checks_file.read_text()))
        else:
            results[name] = ScenarioResult(name, missing=True)
    return results


async def run_suite(suite: Path, url: str, which: str, output_dir: Path) -> SuiteRun:
    await trio.Path(output_dir).mkdir(parents=True)
    with trio.fail_after(SUITE_TIMEOUT):
        completed = await trio.run_process(
            [str(suite), "server", "--url", url, "--suite", which, "-o", str(output_dir)],
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
            cwd=output_dir,
        )
    output = completed.stdout.decode(errors="replace")
    header = SUITE_HEADER.search(output)
    return SuiteRun(
        suite=which,
        returncode=completed.returncode,
        output=output,
        results=read_results(output_dir),
        announced=int(header["count"]) if header else None,
    )


async def read_server_url(stream: trio.abc.ReceiveStream, log: Path) -> str:
    """The URL the runner prints once it listens (``CONFORMANCE_SERVER_URL=...``)."""
    buffer = b""
    with trio.move_on_after(SERVER_START_TIMEOUT):
        while True:
            chunk = await stream.receive_some()
            if not chunk:
                break
            buffer += chunk
            for line in buffer.decode(errors="replace").splitlines():
                match = URL_LINE.match(line)
                if match:
                    return match[1]
    pytest.fail(
        f"server runner did not report its URL within {SERVER_START_TIMEOUT:.0f}s; "
        f"stdout: {buffer!r}\nstderr (tail):\n{tail(log)}"
    )


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def run_target(suite: SuiteVersion, launcher: Path, run: TargetRun, workdir: Path) -> None:
    """Start ``run.target``'s runner, run the suite's scenarios against it, stop it (its PID)."""
    start = time.monotonic()
    server_log = workdir / "server.log"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    with server_log.open("wb") as log_file:
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    run.target.command(),
                    stdout=subprocess.PIPE,
                    stderr=log_file,
                    check=False,
                    cwd=ROOT,
                    env=env,
                )
            )
            assert process.stdout is not None
            run.url = await read_server_url(process.stdout, server_log)
            run.asserted = await run_suite(launcher, run.url, suite.asserted, workdir / "asserted")
            for which in suite.informative:
                run.informative.append(await run_suite(launcher, run.url, which, workdir / which))
            run.server_exit = process.returncode
            nursery.cancel_scope.cancel()  # terminates the runner (SIGTERM, then SIGKILL)
    run.server_log = tail(server_log)
    run.seconds = time.monotonic() - start


def problems_of(suite: SuiteVersion, run: TargetRun) -> list[str]:
    """What is wrong with one target's run, judged against the version's baseline."""
    asserted = run.asserted
    assert asserted is not None
    baseline = load_baseline(suite.baseline, run.target.name)
    name = f"[{suite.version} / {run.target.name}]"
    context = (
        f"\n--- {name} suite output (tail) ---\n{asserted.output[-3000:]}"
        f"\n--- {name} server log (tail) ---\n{run.server_log}"
    )
    if run.server_exit is not None:
        return [f"{name} server runner exited early ({run.server_exit})" + context]
    if not asserted.results:
        return [f"{name} the suite produced no results" + context]
    problems: list[str] = []
    if asserted.announced is not None and len(asserted.results) != asserted.announced:
        problems.append(
            f"{name} suite announced {asserted.announced} scenarios "
            f"but wrote {len(asserted.results)} results"
        )
    unexpected = [
        r for scenario, r in asserted.results.items() if not r.passed and scenario not in baseline
    ]
    stale = sorted(
        scenario for scenario, r in asserted.results.items() if r.passed and scenario in baseline
    )
    if unexpected:
        problems.append(
            f"{name} scenarios failing (not in {suite.baseline.name}):\n"
            + "\n".join("  " + r.describe_failures() for r in unexpected)
        )
    if stale:
        problems.append(
            f"{name} stale baseline entries (these pass now; remove them from "
            f"{suite.baseline.name}): " + ", ".join(stale)
        )
    if not baseline and not problems and asserted.returncode != 0:
        problems.append(f"{name} suite exited {asserted.returncode} although all passed")
    return [p + context for p in problems]


@pytest.mark.conformance
@pytest.mark.parametrize("suite", SUITES, ids=[s.version for s in SUITES])
async def test_conformance_suite(suite: SuiteVersion, tmp_path: Path) -> None:
    launcher = require_installed(suite.launcher)
    runs = {target.name: TargetRun(target) for target in TARGETS}
    async with trio.open_nursery() as nursery:
        for target in TARGETS:
            workdir = tmp_path / target.name
            await trio.Path(workdir).mkdir()
            nursery.start_soon(run_target, suite, launcher, runs[target.name], workdir)

    for run in runs.values():
        assert run.asserted is not None
        extra = "".join(f"; {r.summary()}" for r in run.informative)
        print(
            f"\nconformance {suite.version} [{run.target.name}] {run.url}: "
            f"{run.asserted.summary()}{extra} ({run.seconds:.1f} s)"
        )
        for result in run.asserted.results.values():
            if not result.passed:
                print("  expected failure: " + result.describe_failures().splitlines()[0])
        for informative in run.informative:
            for result in informative.results.values():
                if not result.passed:
                    print(f"  {informative.suite} (informative) " + result.describe_failures())

    problems = [p for run in runs.values() for p in problems_of(suite, run)]
    assert not problems, "\n\n".join(problems)

    # The reference's purpose: whatever the SDK's own stack passes, ours passes too.
    ours, reference = runs["supervisor"].asserted, runs["sdk"].asserted
    assert ours is not None and reference is not None
    behind = sorted(
        name
        for name, result in reference.results.items()
        if result.passed and not (name in ours.results and ours.results[name].passed)
    )
    assert not behind, (
        f"{suite.version}: scenarios the SDK's reference passes but ours does not: "
        + ", ".join(behind)
    )
