"""The documentation: the Sphinx build is clean (warnings are errors) and the tutorial runs.

Every ```python block of docs/tutorial.md is a complete program. A block whose first line is
``# file: NAME`` is saved under that name (later blocks import it); every other block runs as a
script in that directory, and when the tutorial shows its output (a ```text block after "It
prints:") the output must match, with ``PORT`` standing for any port number.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
TUTORIAL = DOCS / "tutorial.md"

_BLOCK = re.compile(
    r"```python\n(?P<code>.*?)```\n(?:\s*It prints:\s*\n\s*```text\n(?P<output>.*?)```)?", re.S
)


def tutorial_blocks() -> list[tuple[str, str, str | None]]:
    """(name, code, expected output or None) for each python block, in order."""
    blocks = []
    for index, match in enumerate(_BLOCK.finditer(TUTORIAL.read_text()), start=1):
        code = match.group("code")
        file = re.match(r"# file: (\S+)\n", code)
        name = file.group(1) if file else f"step_{index}.py"
        blocks.append((name, code, match.group("output")))
    return blocks


def test_the_tutorial_has_runnable_blocks_with_shown_output() -> None:
    blocks = tutorial_blocks()
    assert len(blocks) >= 5
    assert sum(output is not None for _, _, output in blocks) >= 4


def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    for name, code, expected in tutorial_blocks():
        (tmp_path / name).write_text(code)
        if name.startswith("step_"):
            result = subprocess.run(
                [sys.executable, name],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, f"{name} failed:\n{code}\n{result.stderr}"
            if expected is not None:
                pattern = re.escape(expected.strip()).replace("PORT", r"\d+")
                assert re.fullmatch(pattern, result.stdout.strip()), (
                    f"{name} printed:\n{result.stdout}\nthe tutorial shows:\n{expected}"
                )


def test_sphinx_build_is_clean(tmp_path: Path) -> None:
    missing = [m for m in ("sphinx", "myst_parser") if importlib.util.find_spec(m) is None]
    if missing:
        message = f"the [docs] extra is not installed (missing {', '.join(missing)})"
        if os.environ.get("CI"):
            pytest.fail(message + ": CI must build the docs")
        pytest.skip(message)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(tmp_path / "html"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    html = (tmp_path / "html" / "reference.html").read_text()
    # autodoc ran: the reference carries the docstrings of the public API.
    assert "supervisor.Supervisor.create_session_nowait" in html
    assert "supervisor.mcp.serve_http" in html
    for page in ("index", "tutorial", "operations", "coming-from-typescript", "design", "timeouts"):
        assert (tmp_path / "html" / f"{page}.html").exists(), page


README = REPO / "README.md"


def test_the_readme_example_runs(tmp_path: Path) -> None:
    [code] = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (tmp_path / "readme.py").write_text(code)
    result = subprocess.run(
        [sys.executable, "readme.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "1"
    assert "closed done" in result.stdout


def test_the_readme_client_works_against_serve(tmp_path: Path) -> None:
    """The README's "try it" snippet, against ``serve`` on a free port instead of 8000."""
    [snippet] = re.findall(r"<<'PY'\n(.*?)\nPY\n", README.read_text(), re.S)
    server = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "serve", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert first.startswith("serving MCP on "), first
        url = first.split()[-1]
        (tmp_path / "client.py").write_text(snippet.replace("http://127.0.0.1:8000/mcp", url))
        result = subprocess.run(
            [sys.executable, "client.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "['echo', 'counter']",
            "{'count': 1}",
            "{'count': 2}",
            "{'count': 3}",
        ]
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=30)
    assert server.returncode == 0
    assert "supervisor stopped: 1 sessions created, 1 closed" in out
