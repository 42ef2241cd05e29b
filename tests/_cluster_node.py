"""A cluster node for tests/test_cluster_processes.py, run as a subprocess; and an ``--app``.

``python -m tests._cluster_node URL PREFIX CAP PCAP PLAN LOG``: joins the cluster at ``URL``
(keys under ``{PREFIX}``) with ``max_sessions=CAP`` and ``max_sessions_per_principal=PCAP``,
prints ``ready <node id>``, waits for a line on stdin, then runs the plan (JSON file ``PLAN``:
a list of tasks, each a list of operations, the tasks run concurrently) and prints ``done``,
then serves until killed. Every line of ``LOG`` is JSON ``[monotonic, delta, principal]``:
``principal`` null is the total count, else that principal's count; +1 once admitted or bound,
-1 just before the close is asked (so before its slot can go back to the store). A logged
interval lies inside the real holding, so a logged sum over the cap is a real excess.

Operations: ``["admit", tag, principal|null]``, ``["bind", tag, principal]``,
``["close", tag]``, ``["sleep", seconds]``. Tags are local to one task.

`notify_server` is an ``--app``: the demo server plus ``notify``, which sends
``notifications/tools/list_changed`` (a message unrelated to a request, so it rides the GET
stream).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import mcp_types as types
import trio
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server

from supervisor import CapacityError, SessionContext, Supervisor, open_supervisor
from supervisor.mcp import create_demo_server


def notify_server() -> Server[Any]:
    """The demo server plus ``notify``."""
    server = create_demo_server()
    entry = server.get_request_handler("tools/call")
    assert entry is not None
    call_tool = entry.handler

    async def called(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> Any:
        if params.name == "notify":
            await ctx.session.send_tool_list_changed()
            return types.CallToolResult(content=[types.TextContent(text="sent")])
        return await call_tool(ctx, params)

    server.add_request_handler("tools/call", types.CallToolRequestParams, called)
    return server


async def _actor(ctx: SessionContext[Any]) -> None:
    ctx.initialize(client_info={"name": "cluster-node", "version": "0"})
    async for msg in ctx.mailbox:
        msg.reply(msg.payload)


def _log(out: TextIO, delta: int, principal: str | None) -> None:
    out.write(json.dumps([time.monotonic(), delta, principal]) + "\n")
    out.flush()


async def _run_task(sup: Supervisor, ops: list[list[Any]], out: TextIO) -> None:
    held: dict[str, tuple[str, str | None]] = {}  # tag -> (session id, principal)
    for op in ops:
        kind = op[0]
        if kind == "sleep":
            await trio.sleep(float(op[1]))
        elif kind == "admit":
            tag, principal = str(op[1]), op[2]
            try:
                session = await sup.create_session(_actor, principal=principal, wait=False)
            except CapacityError:
                continue
            _log(out, 1, None)
            if principal is not None:
                _log(out, 1, principal)
            held[tag] = (session.id, principal)
        elif kind == "bind":
            tag, principal = str(op[1]), str(op[2])
            if tag not in held or held[tag][1] is not None:
                continue
            try:
                await sup.bind_principal(held[tag][0], principal)
            except CapacityError:
                continue
            _log(out, 1, principal)
            held[tag] = (held[tag][0], principal)
        elif kind == "close":
            tag = str(op[1])
            if tag not in held:
                continue
            session_id, principal = held.pop(tag)
            if principal is not None:
                _log(out, -1, principal)
            _log(out, -1, None)
            sup.close_session(session_id)
        else:
            raise ValueError(f"unknown operation {op!r}")


async def _main(argv: list[str]) -> None:
    from supervisor.cluster import Cluster

    url, prefix, cap, pcap, plan_path, log_path = argv
    plan: list[list[list[Any]]] = json.loads(Path(plan_path).read_text())  # noqa: ASYNC240
    cluster = Cluster(url, prefix=prefix, lease=1.5, check_every=0.5, request_timeout=0.3)
    async with open_supervisor(
        cluster=cluster, max_sessions=int(cap), max_sessions_per_principal=int(pcap)
    ) as sup:
        print(f"ready {cluster.node_id}", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        with Path(log_path).open("w") as out:  # noqa: ASYNC230 (a small local file)
            async with trio.open_nursery() as nursery:
                for ops in plan:
                    nursery.start_soon(_run_task, sup, ops, out)
        print("done", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(_main, sys.argv[1:])
