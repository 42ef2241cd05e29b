"""examples/cluster/run.py, end to end: a real Redis and three ``serve --cluster`` processes on
loopback, one session used through every node, and nothing left running afterwards."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "cluster" / "run.py"
TIMEOUT = 120  # seconds for the whole demo on a loaded 2-core machine


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the PID was reused by someone else's process
        return False
    return True


def test_the_cluster_demo_counts_through_every_node_and_stops_everything() -> None:
    # Its own process group, so that a demo that hangs is killed with what it started.
    script = subprocess.Popen(
        [sys.executable, str(SCRIPT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    try:
        out, err = script.communicate(timeout=TIMEOUT)
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
            script.communicate()
    assert script.returncode == 0, f"stdout {out!r}, stderr {err[-3000:]!r}"
    assert "3 nodes in the cluster:" in out
    nodes = re.findall(r"node (\d): (\w+)\s+MCP (http://127\.0\.0\.1:\d+/mcp)", out)
    assert [n for n, _, _ in nodes] == ["1", "2", "3"], out
    owner = re.search(r"its id ends in \.(\w+)", out)
    assert owner is not None and owner.group(1) == nodes[0][1], out
    assert "counter through node 1" in out and "(served by the owner)" in out
    assert out.count("(forwarded to the owner)") == 2, out
    assert "the count continued across the nodes: [1, 2, 3]" in out
    assert "closed the session through node 3" in out
    started = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", out)]
    stopped = re.search(r"stopped pids ([\d ]+)", out)
    assert stopped is not None, out
    assert sorted(map(int, stopped.group(1).split())) == sorted(started) and len(started) == 4
    deadline = time.monotonic() + 5.0
    while any(is_running(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in started if is_running(pid)], "processes left running"
