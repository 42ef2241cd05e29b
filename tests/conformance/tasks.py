"""The tasks extension (SEP-2663, ``io.modelcontextprotocol/tasks``) for the conformance fixture.

The SDK (``mcp`` 2.3) implements no tasks extension, but it has the hook one is built on: an
`Extension` (SEP-2133) may add request methods (``tasks/get``, ``tasks/update``,
``tasks/cancel``), contribute tools and intercept ``tools/call``. This module builds the
extension the alpha suite's ``tasks-*`` scenarios exercise on that hook, with the fixtures they
name: ``greet`` (sync only), ``slow_compute``, ``failing_job`` (task required),
``protocol_error_job``, ``confirm_delete``, ``multi_input`` and ``test_tool_with_task`` (task
required, after a multi-round-trip input round).

A task is simulated, not run: its status follows from the time since it was created and from
the input the client delivered (``tasks/update``), computed when it is read. So nothing runs in
the background and the store needs no task group (a sessionless request has none that outlives
it). The store is process-wide, so every fixture instance (our adapter builds one per session
and one for the sessionless era) sees every task; it is bounded in size and by each task's TTL.

A client that did not declare the extension (in the request's ``clientCapabilities``) gets
-32021 from the ``tasks/*`` methods and from the task-required tools, and the other task tools
run synchronously for it, as the SEP says.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding, ToolBinding
from mcp.server.mcpserver.server import require_client_extension
from mcp.shared.exceptions import MCPError
from mcp_types import (
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    InputRequiredResult,
    RequestParams,
    TextContent,
)

__all__ = ["TASKS_EXTENSION", "TasksExtension"]

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
TTL_MS = 10 * 60 * 1000
POLL_INTERVAL_MS = 200
MAX_TASKS = 1000
FAILING_JOB_SECONDS = 1.0

#: Tools the extension may turn into a task; the "required" ones refuse a client without it.
TASK_TOOLS = {
    "slow_compute": "optional",
    "failing_job": "required",
    "protocol_error_job": "optional",
    "confirm_delete": "optional",
    "multi_input": "optional",
    "test_tool_with_task": "required",
}
TERMINAL = frozenset({"completed", "failed", "cancelled"})


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def _text(text: str, *, is_error: bool = False) -> dict[str, Any]:
    result = CallToolResult(content=[TextContent(type="text", text=text)], is_error=is_error)
    return result.model_dump(by_alias=True, mode="json", exclude_none=True)


def _ask(message: str, field_name: str, kind: str) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {field_name: {"type": kind}},
        "required": [field_name],
    }
    request = ElicitRequest(
        params=ElicitRequestFormParams(message=message, requested_schema=schema)
    )
    return request.model_dump(by_alias=True, mode="json", exclude_none=True)


def _accepted(answer: Any, field_name: str) -> str | None:
    """The accepted value of ``field_name`` in an elicitation answer, or None."""
    try:
        result = ElicitResult.model_validate(answer)
    except ValueError:
        return None
    if result.action != "accept":
        return None
    return str((result.content or {}).get(field_name, ""))


@dataclass
class _Task:
    """One simulated task: how it ends is decided when it is created or answered."""

    task_id: str
    tool: str
    arguments: dict[str, Any]
    created: float  # wall clock (for the ISO timestamps)
    started: float  # monotonic (for durations)
    updated: float
    status: str = "working"
    done_after: float | None = None  # seconds after `started` when a working task ends
    outcome: dict[str, Any] | None = None  # {"result": ...} or {"error": ...} once it ends
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> input request
    answers: dict[str, Any] = field(default_factory=dict)

    def refresh(self) -> None:
        """Advance a working task whose time has come."""
        if self.status != "working" or self.done_after is None:
            return
        if time.monotonic() - self.started >= self.done_after:
            self._finish(self.started + self.done_after)

    def _finish(self, at_monotonic: float) -> None:
        self.updated = self.created + (at_monotonic - self.started)
        if self.tool == "protocol_error_job":
            self.status = "failed"
            self.outcome = {
                "error": {"code": INTERNAL_ERROR, "message": "protocol_error_job crashed"}
            }
        elif self.tool == "failing_job":
            self.status = "completed"
            self.outcome = {"result": _text("failing_job failed, as it always does", is_error=True)}
        else:
            self.status = "completed"
            self.outcome = {"result": _text(self._answer_text())}

    def _answer_text(self) -> str:
        if self.tool == "slow_compute":
            label = self.arguments.get("label", "")
            return f"slow_compute {label!s} finished after {self.arguments.get('seconds', 0)} s"
        if self.tool == "confirm_delete":
            confirmed = _accepted(self.answers.get("confirm"), "confirm")
            filename = self.arguments.get("filename", "")
            verb = "Deleted" if confirmed in ("True", "true") else "Kept"
            return f"{verb} {filename}"
        if self.tool == "multi_input":
            names = [_accepted(self.answers.get(key), "name") for key in ("first", "second")]
            return "Received " + ", ".join(str(name) for name in names)
        if self.tool == "test_tool_with_task":
            return f"Hello, {self.arguments.get('user_name', '')}!"
        return f"{self.tool} finished"

    def deliver(self, responses: dict[str, Any]) -> None:
        """Answers from ``tasks/update``: the pending keys they name are answered."""
        if self.status != "input_required":
            return
        for key, answer in responses.items():
            if key in self.pending:
                del self.pending[key]
                self.answers[key] = answer
        self.updated = time.time()
        if not self.pending:
            self.status = "working"
            self._finish(time.monotonic())

    def cancel(self) -> None:
        self.refresh()
        if self.status not in TERMINAL:
            self.status = "cancelled"
            self.pending.clear()
            self.updated = time.time()

    def envelope(self) -> dict[str, Any]:
        return {
            "taskId": self.task_id,
            "status": self.status,
            "createdAt": _iso(self.created),
            "lastUpdatedAt": _iso(self.updated),
            "ttlMs": TTL_MS,
            "pollIntervalMs": POLL_INTERVAL_MS,
        }

    def detailed(self) -> dict[str, Any]:
        self.refresh()
        detail = {"resultType": "complete", **self.envelope()}
        if self.status == "input_required":
            detail["inputRequests"] = dict(self.pending)
        elif self.outcome is not None and self.status != "cancelled":
            detail.update(self.outcome)
        return detail


class _TaskStore:
    """Every task of the process, oldest first; bounded by ``MAX_TASKS`` and each task's TTL."""

    def __init__(self) -> None:
        self._tasks: OrderedDict[str, _Task] = OrderedDict()

    def create(self, tool: str, arguments: dict[str, Any]) -> _Task:
        self._expire()
        now = time.time()
        task = _Task(
            task_id=secrets.token_urlsafe(16),
            tool=tool,
            arguments=arguments,
            created=now,
            started=time.monotonic(),
            updated=now,
        )
        self._tasks[task.task_id] = task
        while len(self._tasks) > MAX_TASKS:
            self._tasks.popitem(last=False)
        return task

    def get(self, task_id: str) -> _Task:
        self._expire()
        task = self._tasks.get(task_id)
        if task is None:
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown taskId {task_id[:64]!r}")
        return task

    def _expire(self) -> None:
        horizon = time.monotonic() - TTL_MS / 1000
        while self._tasks:
            oldest = next(iter(self._tasks.values()))
            if oldest.started >= horizon:
                return
            self._tasks.popitem(last=False)


STORE = _TaskStore()


class TaskParams(RequestParams):
    task_id: str


class TaskUpdateParams(TaskParams):
    input_responses: dict[str, Any] | None = None


def _check_routing(ctx: ServerRequestContext[Any, Any], task_id: str) -> None:
    """SEP-2663: a ``tasks/*`` request's ``Mcp-Name`` header, when sent, names its taskId."""
    headers = getattr(ctx.request, "headers", None) or {}
    name = headers.get("mcp-name")
    if name is not None and name.strip() != task_id:
        raise MCPError(code=HEADER_MISMATCH, message="Mcp-Name header does not match params.taskId")


async def _tasks_get(ctx: ServerRequestContext[Any, Any], params: TaskParams) -> HandlerResult:
    require_client_extension(ctx, TASKS_EXTENSION)
    _check_routing(ctx, params.task_id)
    return STORE.get(params.task_id).detailed()


async def _tasks_update(
    ctx: ServerRequestContext[Any, Any], params: TaskUpdateParams
) -> HandlerResult:
    require_client_extension(ctx, TASKS_EXTENSION)
    _check_routing(ctx, params.task_id)
    STORE.get(params.task_id).deliver(dict(params.input_responses or {}))
    return {"resultType": "complete"}


async def _tasks_cancel(ctx: ServerRequestContext[Any, Any], params: TaskParams) -> HandlerResult:
    require_client_extension(ctx, TASKS_EXTENSION)
    _check_routing(ctx, params.task_id)
    STORE.get(params.task_id).cancel()
    return {"resultType": "complete"}


def _declares_tasks(ctx: ServerRequestContext[Any, Any]) -> bool:
    capabilities = ctx.session.client_capabilities
    return bool(
        capabilities and capabilities.extensions and TASKS_EXTENSION in capabilities.extensions
    )


# -- the tools (their bodies are the synchronous path, for a client without the extension) ----


def greet(name: str) -> str:
    """Greets synchronously (never a task)."""
    return f"Hello, {name}!"


async def slow_compute(seconds: float = 0, label: str = "") -> str:
    """Sleeps ``seconds`` then answers; a task for a client with the tasks extension."""
    await anyio.sleep(min(max(seconds, 0), 60))
    return f"slow_compute {label} finished after {seconds} s"


def failing_job() -> CallToolResult:
    """Always ends in a tool error; needs the tasks extension."""
    return CallToolResult(
        content=[TextContent(type="text", text="failing_job failed, as it always does")],
        is_error=True,
    )


def protocol_error_job() -> str:
    """Always ends in a protocol error."""
    raise MCPError(code=INTERNAL_ERROR, message="protocol_error_job crashed")


def confirm_delete(filename: str) -> str:
    """Asks for confirmation before deleting ``filename`` (as a task: input_required)."""
    return f"Not deleted: {filename} (confirmation needs the tasks extension)"


def multi_input() -> str:
    """Asks two questions at once (as a task: two pending input requests)."""
    return "multi_input needs the tasks extension"


def test_tool_with_task() -> str:
    """Asks the user's name, then continues as a task; needs the tasks extension."""
    return "test_tool_with_task needs the tasks extension"


class TasksExtension(Extension):
    """``io.modelcontextprotocol/tasks`` over the SDK's extension hook (see the module doc)."""

    identifier = TASKS_EXTENSION

    def tools(self) -> Sequence[ToolBinding]:
        plain = {"structured_output": False}
        fns: list[Callable[..., Any]] = [
            greet,
            slow_compute,
            failing_job,
            protocol_error_job,
            confirm_delete,
            multi_input,
            test_tool_with_task,
        ]
        return [ToolBinding(fn, kwargs=dict(plain)) for fn in fns]

    def methods(self) -> Sequence[MethodBinding]:
        return [
            MethodBinding("tasks/get", TaskParams, _tasks_get),
            MethodBinding("tasks/update", TaskUpdateParams, _tasks_update),
            MethodBinding("tasks/cancel", TaskParams, _tasks_cancel),
        ]

    async def intercept_tool_call(
        self,
        params: CallToolRequestParams,
        ctx: ServerRequestContext[Any, Any],
        call_next: CallNext,
    ) -> HandlerResult:
        support = TASK_TOOLS.get(params.name)
        if support is None:
            return await call_next(ctx)
        if not _declares_tasks(ctx):
            if support == "required":
                require_client_extension(ctx, TASKS_EXTENSION)  # raises -32021
            return await call_next(ctx)
        arguments = dict(params.arguments or {})
        if params.name == "test_tool_with_task":
            # A multi-round-trip input round first; the task is created on the final round.
            name = _accepted((params.input_responses or {}).get("user_name"), "name")
            if name is None:
                ask = _ask("What is your name?", "name", "string")
                return InputRequiredResult.model_validate(
                    {"resultType": "input_required", "inputRequests": {"user_name": ask}}
                )
            arguments["user_name"] = name
        task = STORE.create(params.name, arguments)
        if params.name == "slow_compute":
            task.done_after = max(float(arguments.get("seconds", 0) or 0), 0.0)
        elif params.name == "failing_job":
            task.done_after = FAILING_JOB_SECONDS
        elif params.name in ("protocol_error_job", "test_tool_with_task"):
            task.done_after = 0.0
        elif params.name == "confirm_delete":
            task.status = "input_required"
            filename = arguments.get("filename", "")
            task.pending = {"confirm": _ask(f"Delete {filename}?", "confirm", "boolean")}
        elif params.name == "multi_input":
            task.status = "input_required"
            task.pending = {
                "first": _ask("First name?", "name", "string"),
                "second": _ask("Second name?", "name", "string"),
            }
        return {"resultType": "task", **task.envelope()}
