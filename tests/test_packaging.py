"""The package as a user gets it: ``python -m build`` makes a wheel and an sdist that pass
``twine check``, hold what they should (and no work-tree junk), and the wheel installed with its
``[mcp,cli]`` extras into a fresh venv serves the demo.

Everything is built and installed under ``tmp_path``; nothing is written into the work tree.
The fresh venv's server binds 127.0.0.1 on a free port and is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # a build, and a venv with the extras installed from the registry

#: Paths that must never be packaged (prefixes of archive member names, relative to the root).
JUNK = (".venv/", ".tools/", "docs/_build/", ".bench-quick/", ".git/", ".hypothesis/", "dist/")

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "test_packaging", "version": "0"},
    },
}


def tree_entries() -> set[str]:
    """The work tree's top-level entries and any build leftovers below it (``*.egg-info``).

    Not the whole tree: other test runs may be writing ``__pycache__`` meanwhile.
    """
    entries = {path.name for path in REPO.iterdir()}
    return entries | {str(path) for path in REPO.glob("*/*.egg-info")}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel and the sdist, built from the work tree into a temporary directory."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(REPO)],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def only(directory: Path, pattern: str) -> Path:
    [path] = directory.glob(pattern)
    return path


def test_build_writes_nothing_into_the_tree(tmp_path: Path) -> None:
    before = tree_entries()
    result = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path), str(REPO)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    new = tree_entries() - before
    assert not new, f"building wrote into the work tree: {sorted(new)}"


def test_the_wheel_and_the_sdist_pass_twine_check(dist: Path) -> None:
    files = [str(only(dist, "*.whl")), str(only(dist, "*.tar.gz"))]
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_the_wheel_holds_the_typed_package_and_its_entry_point(dist: Path) -> None:
    wheel = only(dist, "trio_session_supervisor-*-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = archive.read(metadata).decode()
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert "supervisor/py.typed" in names
    for module in ("supervisor/__init__.py", "supervisor/mcp/__init__.py", "supervisor/_cli.py"):
        assert module in names, module
    assert not [n for n in names if n.startswith(("tests/", "docs/", "bench/", "examples/"))]
    assert "trio-session-supervisor = supervisor.__main__:main" in scripts
    assert "Name: trio-session-supervisor" in meta
    assert "Provides-Extra: mcp" in meta and "Provides-Extra: cli" in meta
    assert "Description-Content-Type: text/markdown" in meta


def test_the_sdist_holds_the_source_and_no_junk(dist: Path) -> None:
    sdist = only(dist, "trio_session_supervisor-*.tar.gz")
    with tarfile.open(sdist) as archive:
        root, *_ = archive.getnames()[0].split("/")
        names = {name.removeprefix(root + "/") for name in archive.getnames()}
    for wanted in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "supervisor/py.typed",
        "supervisor/mcp/_http.py",
        "tests/test_packaging.py",
        "docs/conf.py",
        "docs/tutorial.md",
        "examples/echo.py",
    ):
        assert wanted in names, wanted
    junk = sorted(
        name
        for name in names
        if name.startswith(JUNK)
        or "/__pycache__/" in f"/{name}"
        or "/node_modules/" in f"/{name}"
        or name.endswith(".pyc")
    )
    assert not junk, junk[:20]


def test_the_built_wheel_serves_the_demo_from_a_fresh_venv(dist: Path, tmp_path: Path) -> None:
    wheel = only(dist, "*.whl")
    venv = tmp_path / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{wheel}[mcp,cli]"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    installed_in = time.monotonic() - started
    assert installed_in < 420

    # Imported from the venv, not from the checkout (the cwd is tmp_path, outside the tree).
    where = subprocess.run(
        [str(python), "-c", "import supervisor, json; print(json.dumps(supervisor.__file__))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert Path(json.loads(where.stdout)).is_relative_to(venv), where.stdout

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    server = subprocess.Popen(
        [str(venv / "bin" / "trio-session-supervisor"), "serve", "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert first.startswith("serving MCP on http://127.0.0.1:"), first
        url = first.split()[-1]
        response = httpx.post(
            url,
            json=INITIALIZE,
            headers={"accept": "application/json, text/event-stream"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.headers.get("mcp-session-id")
        assert '"serverInfo"' in response.text
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
        assert server.returncode == 0
        assert "supervisor stopped: 1 sessions created" in out
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
    print(f"fresh venv with the wheel and [mcp,cli] installed in {installed_in:.1f} s")
