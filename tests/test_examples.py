"""Every example is a template: documented, and run here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trio
import trio.testing

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"examples_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_every_example_says_what_it_shows_and_how_to_run_it(path: Path) -> None:
    module = load(path.stem)
    doc = module.__doc__ or ""
    assert "What it shows" in doc, f"{path.name}: docstring lacks 'What it shows'"
    assert "Run it" in doc, f"{path.name}: docstring lacks 'Run it'"
    assert "main" in vars(module), f"{path.name}: no main()"


async def test_echo_example(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    totals = await load("echo").main(idle_timeout=30.0)
    assert totals == {"created": 3, "closed": 1, "expired": 2, "live": 0}
    out = capsys.readouterr().out
    assert "call -> 'hello" in out
    assert "expired (idle-timeout)" in out
    assert "closed (done with it)" in out


async def test_counter_example(capsys: pytest.CaptureFixture[str]) -> None:
    seen = await load("counter").main()
    assert seen == {"alice": [1, 2, 3], "bob": [1], "alice_final": 3}
    assert "unknown command 'decrement'" in capsys.readouterr().out


async def test_durable_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """examples/durable/run.py (real time, SQLite, a second process): passivation at idle,
    activation, a restart after a crash, a second process that dies, then a restart."""
    path = EXAMPLES / "durable" / "run.py"
    spec = importlib.util.spec_from_file_location("examples_durable_run", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    doc = module.__doc__ or ""
    assert "What it shows" in doc and "Run it" in doc
    with trio.fail_after(60):  # bounded: a few seconds normally, on a loaded machine more
        seen = await module.main(tmp_path / "sessions.db")
    assert seen == {"counts": [1, 2, 3, 4, 5, 6, 7], "second_exit": 3, "gone": True}
    out = capsys.readouterr().out
    for shown in (
        "PASSIVATED",
        "(idle-timeout)",
        "ACTIVATED",
        "RESTARTED",
        "(shutdown)",
        "second process",
        "activate() now raises SessionNotFound",
    ):
        assert shown in out, shown
