"""The public surface: the names in DESIGN.md's contract, exported from the root, documented."""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import pytest

import supervisor

CONTRACT = [
    *("open_supervisor", "Supervisor", "SupervisorConfig", "SessionContext", "Session"),
    *("Message", "SessionState", "Transport", "Event", "EventKind", "Lagged"),
    *("SessionStatistics", "SessionMetrics", "SupervisorError", "CapacityError"),
    *("SessionNotFound", "SessionClosed", "InvalidTransition", "MailboxFull"),
]

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_contract_names_are_exported() -> None:
    for name in CONTRACT:
        assert name in supervisor.__all__, name
        assert hasattr(supervisor, name), name
    assert sorted(supervisor.__all__) == sorted(set(supervisor.__all__))
    for name in supervisor.__all__:
        assert getattr(supervisor, name) is not None


@pytest.mark.parametrize("name", supervisor.__all__)
def test_every_public_name_has_a_docstring_and_a_place_in_the_reference(name: str) -> None:
    obj = getattr(supervisor, name)
    if inspect.isclass(obj) or inspect.isfunction(obj):
        assert inspect.getdoc(obj), f"{name} has no docstring"
        assert obj.__module__ == "supervisor", f"{name} should present itself as supervisor.{name}"
    reference = (DOCS / "api.md").read_text()
    assert f"`{name}`" in reference, f"{name} is missing from docs/api.md"


@pytest.mark.parametrize(
    "cls", [supervisor.Supervisor, supervisor.SessionContext, supervisor.Message]
)
def test_public_methods_are_documented(cls: type) -> None:
    for attr, value in vars(cls).items():
        if attr.startswith("_") or not callable(value):
            continue
        assert inspect.getdoc(value), f"{cls.__name__}.{attr} has no docstring"


def test_exception_family() -> None:
    for name in ("CapacityError", "SessionNotFound", "SessionClosed", "InvalidTransition"):
        assert issubclass(getattr(supervisor, name), supervisor.SupervisorError)
    assert issubclass(supervisor.SessionNotFound, KeyError)
    assert issubclass(supervisor.MailboxFull, supervisor.SupervisorError)


CORE = ["__init__", "_config", "_events", "_exceptions", "_session", "_state", "_stats"]
CORE += ["_ids", "_supervisor", "_durable", "_timers"]


def test_core_imports_only_trio_and_attrs() -> None:
    allowed = {"trio", "attrs", "outcome", "supervisor"}  # outcome is trio's own result type
    root = Path(supervisor.__file__).parent
    for path in (root / f"{name}.py" for name in CORE):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for module in names:
                top = module.split(".")[0]
                assert top in allowed or top in sys.stdlib_module_names, f"{path.name}: {module}"


#: The core's layers, bottom up: a module imports only from layers below its own (never from
#: its own layer or above, not even under TYPE_CHECKING).
LAYERS = [
    {"_ids", "_exceptions"},
    {"_config", "_state", "_durable"},
    {"_stats", "_session"},
    {"_timers"},
    {"_events"},
    {"_supervisor"},
    {"__init__"},
]


def test_core_modules_import_one_way() -> None:
    root = Path(supervisor.__file__).parent
    layer_of = {name: n for n, layer in enumerate(LAYERS) for name in layer}
    assert set(layer_of) >= set(CORE)
    for name, layer in layer_of.items():
        tree = ast.parse((root / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                target = (node.module or "").split(".")[0]
                if target not in layer_of:
                    continue  # not a core module (the optional layers import the core, not back)
                assert layer_of[target] < layer, f"{name} imports {target}: not a lower layer"


def test_the_embedded_store_imports_only_the_core_and_the_stdlib() -> None:
    # supervisor.durable sits right above the core: no extra, no MCP, no cluster.
    for path in (Path(supervisor.__file__).parent / "durable").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif isinstance(node, ast.ImportFrom) and node.level == 2:
                # From the package above: the core's own modules only (``.._durable``).
                core = (node.module or "").split(".")[0]
                assert core in CORE, f"{path.name}: ..{node.module}"
                continue
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert top in {"trio", "attrs"} or top in sys.stdlib_module_names, module
