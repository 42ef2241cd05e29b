"""The public surface of ``supervisor.mcp``: every name exported, documented, and listed."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import supervisor.mcp as mcp_adapter


def test_every_public_name_is_exported_and_documented() -> None:
    module_doc = mcp_adapter.__doc__ or ""
    for name in mcp_adapter.__all__:
        obj = getattr(mcp_adapter, name)
        assert f"`{name}`" in module_doc, f"{name} is not listed in the module docstring"
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def test_no_private_names_leak() -> None:
    assert all(not name.startswith("_") for name in mcp_adapter.__all__)
    assert sorted(mcp_adapter.__all__) == sorted(set(mcp_adapter.__all__))


#: The adapter's modules, bottom up: a module imports only from layers below its own (never from
#: its own layer or above, not even under TYPE_CHECKING or inside a function), so no two import
#: each other. The HTTP front end: the ASGI vocabulary (`_asgi`); request checks and bearer
#: tokens, the session wire and the 2026-07-28 single exchange; the HTTP session actor and the
#: WebSocket transport; the app that routes (`_http`);
#: serving it with hypercorn.
ADAPTER_LAYERS = [
    {"_session", "_asgi"},
    {"_handles", "_checks", "_auth", "_transport", "_modern"},
    {"_demo", "_memory", "_stdio", "_http_session", "_websocket"},
    {"_http"},
    {"_serving"},
    {"__init__"},
]


def _adapter_imports(path: Path) -> set[str]:
    """The adapter modules ``path`` imports, wherever the import stands."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module is not None:
                imported.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import _x
                imported.update(alias.name for alias in node.names)
            elif node.level == 0 and (node.module or "").startswith("supervisor.mcp."):
                imported.add((node.module or "").split(".")[2])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("supervisor.mcp."):
                    imported.add(alias.name.split(".")[2])
    return imported


def test_adapter_modules_import_one_way() -> None:
    root = Path(mcp_adapter.__file__).parent
    layer_of = {name: n for n, layer in enumerate(ADAPTER_LAYERS) for name in layer}
    modules = {path.stem for path in root.glob("*.py")}
    assert modules == set(layer_of), "every adapter module has a layer, and only those"
    for name, layer in layer_of.items():
        for target in _adapter_imports(root / f"{name}.py"):
            assert target in layer_of, f"{name} imports {target}: not an adapter module"
            assert layer_of[target] < layer, f"{name} imports {target}: not a lower layer"
