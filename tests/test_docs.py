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
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
TUTORIAL = DOCS / "tutorial.md"
README = REPO / "README.md"

_BLOCK = re.compile(
    r"```python\n(?P<code>.*?)```\n(?:\s*It prints:\s*\n\s*```text\n(?P<output>.*?)```)?", re.S
)


def tutorial_blocks(page: Path = TUTORIAL) -> list[tuple[str, str, str | None]]:
    """(name, code, expected output or None) for each python block of ``page``, in order."""
    blocks = []
    for index, match in enumerate(_BLOCK.finditer(page.read_text()), start=1):
        code = match.group("code")
        file = re.match(r"# file: (\S+)\n", code)
        name = file.group(1) if file else f"step_{index}.py"
        blocks.append((name, code, match.group("output")))
    return blocks


#: The widest code line the docs' content column shows without cutting it off (furo, 1200 px).
CODE_WIDTH = 76


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every line inside a fenced code block of ``path``."""
    lines, inside = [], False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        if inside:
            lines.append((number, line))
    return lines


@pytest.mark.parametrize("page", ["index.md", "tutorial.md"])
def test_code_blocks_fit_the_column(page: str) -> None:
    too_wide = [
        f"{page}:{number}: {len(line)} > {CODE_WIDTH}: {line}"
        for number, line in code_lines(DOCS / page)
        if len(line) > CODE_WIDTH
    ]
    assert not too_wide, "\n".join(too_wide)


def test_the_landing_page_shows_what_it_is_before_the_contents(tmp_path: Path) -> None:
    text = (DOCS / "index.md").read_text()
    before = text[: text.index("{toctree}")]
    assert "```python" in before, "no code example before the table of contents"
    assert "```text" in before, "no output (what it looks like) before the table of contents"
    assert "](_static/top.svg)" in before, "no picture of the demo before the contents"
    assert (DOCS / "_static" / "top.svg").read_text().lstrip().startswith("<svg")
    [(name, code, expected)] = tutorial_blocks(DOCS / "index.md")
    assert expected is not None
    (tmp_path / name).write_text(code)
    result = subprocess.run(
        [sys.executable, name], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected.strip()


def test_install_instructions_work_before_the_package_is_published() -> None:
    """No page tells a user to install the distribution by name from the registry (it is not
    published): installs are from a checkout or a built wheel, as tests/test_packaging.py does.
    """
    for page in (README, TUTORIAL, DOCS / "index.md"):
        text = page.read_text()
        by_name = re.findall(r"pip install [\"']?trio-session-supervisor\b", text)
        assert not by_name, f"{page.name}: {by_name}"
    tutorial = TUTORIAL.read_text()
    assert 'pip install -e ".[mcp,cli,metrics]"' in tutorial
    assert "python -m build" in tutorial
    assert "dist/trio_session_supervisor-" in tutorial
    assert 'pip install -e ".[mcp]"' in README.read_text()


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
    missing = [m for m in ("sphinx", "myst_parser", "furo") if importlib.util.find_spec(m) is None]
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
    # The furo theme (as attrs uses): its stylesheet is linked from every page.
    assert "styles/furo.css" in (tmp_path / "html" / "index.html").read_text()


def test_the_readme_example_runs(tmp_path: Path) -> None:
    [code] = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (tmp_path / "readme.py").write_text(code)
    result = subprocess.run(
        [sys.executable, "readme.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "1"
    assert "closed done" in result.stdout


def test_the_readme_opens_with_make_demo_and_make_test() -> None:
    first = re.search(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert first is not None
    commands = [line.split("#")[0].strip() for line in first.group(1).splitlines()]
    assert commands == ["make demo", "make test"]


#: What the README's three "try it" snippets print, in order: the official client's default
#: mode counting through a handle, its legacy mode counting in its protocol session, the idle
#: client (checked separately: its line carries a session id).
README_CLIENT_OUTPUTS = [
    [
        "['echo', 'counter', 'open_session', 'close_session']",
        "{'count': 1}",
        "{'count': 2}",
        "{'count': 3}",
    ],
    ["{'count': 1}", "{'count': 2}", "{'count': 3}"],
]


def test_the_readme_clients_work_against_serve(tmp_path: Path) -> None:
    """The README's "try it" snippets against ``serve`` on a free port instead of 8000, with the
    idle timeout of ``make demo`` shortened: the default-mode client counts 1, 2, 3 through a
    handle and closes it, the legacy-mode client counts 1, 2, 3 in its protocol session, which
    ends closed, and the idle client's session expires (``idle-timeout``), as the README says
    ``top`` and the stop summary show.
    """
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^DEMO_IDLE_TIMEOUT \?= 60$", makefile, re.M)
    assert "--idle-timeout $(DEMO_IDLE_TIMEOUT)" in makefile
    readme = README.read_text()
    prose = " ".join(readme.split())
    assert "expires 60 seconds after its last request" in prose
    assert "try it with the official Python client in its default mode:" in prose
    default, legacy, idle, _, _ = re.findall(r"<<'PY'\n(.*?)\nPY\n", readme, re.S)
    assert 'Client("http://127.0.0.1:8000/mcp")' in default  # the default mode, no mode=
    assert '"open_session"' in default and '{"session": handle}' in default
    assert 'mode="legacy"' in legacy
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "supervisor",
            "serve",
            "--port",
            "0",
            "--idle-timeout",
            "3",  # short for the idle client, long enough between one snippet's calls
            "--log-level",
            "info",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    # Bounds every blocking read below: a hung server is killed, its pipes close.
    watchdog = threading.Timer(120, server.kill)
    watchdog.start()
    try:
        assert server.stdout is not None and server.stderr is not None
        first = server.stdout.readline()
        assert first.startswith("serving MCP on "), first
        url = first.split()[-1]
        outputs = []
        for name, snippet in (("default.py", default), ("legacy.py", legacy), ("idle.py", idle)):
            (tmp_path / name).write_text(snippet.replace("http://127.0.0.1:8000/mcp", url))
            result = subprocess.run(
                [sys.executable, name], cwd=tmp_path, capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0, result.stderr
            assert result.stderr == "", result.stderr  # as a user runs it: no warning, no error
            outputs.append(result.stdout.splitlines())
        assert outputs[:2] == README_CLIENT_OUTPUTS
        [line] = outputs[2]
        left = re.fullmatch(r"left session (\S{8}) idle", line)
        assert left, line
        expired = f"session expired session={left[1]} "
        log = []
        for entry in server.stderr:  # the serve log, until the idle session's expiry
            log.append(entry)
            if expired in entry:
                assert "reason=idle-timeout" in entry, entry
                break
        else:
            pytest.fail("the idle session never expired:\n" + "".join(log))
        server.terminate()
        out, _ = server.communicate(timeout=30)
    finally:
        watchdog.cancel()
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
    assert server.returncode == 0
    summary = "supervisor stopped: 3 sessions created, 2 closed, 1 expired"
    assert summary in out
    assert summary in prose


def _serve(*args: str) -> tuple[subprocess.Popen[str], str]:
    """``serve`` on a free port with ``args``; the server and the URL it serves on."""
    server = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "serve", "--port", "0", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    watchdog = threading.Timer(60, server.kill)  # bounds the readline below
    watchdog.start()
    try:
        assert server.stdout is not None
        lines = [server.stdout.readline() for _ in range(2)]  # which store, then the URL
        assert lines[0].startswith("durable sessions in SQLite file "), lines
        assert lines[1].startswith("serving MCP on "), lines
    except BaseException:
        server.kill()  # stopped by its PID whatever went wrong
        server.wait(timeout=10)
        raise
    finally:
        watchdog.cancel()
    return server, lines[1].split()[-1]


def test_the_readme_durable_snippets_survive_a_kill(tmp_path: Path) -> None:
    """The README's durable example: ``serve --store sqlite:///...``, count to 3 through a
    handle, ``kill -9`` the server, start it again with the same command, the handle counts on
    at 4."""
    readme = README.read_text()
    assert "serve --store sqlite:///sessions.db" in readme
    *_, first, again = re.findall(r"<<'PY'\n(.*?)\nPY\n", readme, re.S)
    store = f"sqlite:///{tmp_path / 'sessions.db'}"
    outputs = []
    for snippet in (first, again):
        server, url = _serve("--store", store)
        try:
            (tmp_path / "snippet.py").write_text(snippet.replace("http://127.0.0.1:8000/mcp", url))
            result = subprocess.run(
                [sys.executable, "snippet.py"],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            outputs.append(result.stdout.splitlines())
        finally:
            server.kill()  # kill -9: no passivation, no goodbye
            server.wait(timeout=10)
    assert outputs == [["{'count': 1}", "{'count': 2}", "{'count': 3}"], ["{'count': 4}"]]
    assert "It prints `{'count': 4}`" in readme
