"""The public surface of ``supervisor.mcp``: every name exported, documented, and listed."""

from __future__ import annotations

import inspect

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
