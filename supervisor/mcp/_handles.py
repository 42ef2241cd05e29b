"""State handles: supervised sessions for the sessionless 2026-07-28 era.

MCP 2026-07-28 has no protocol session (no ``initialize``, no ``Mcp-Session-Id``); a server that
keeps state between calls mints an opaque *state handle* that later calls pass back as an
argument. Here every handle **is** a session of the core: `open_session` creates one with
``create_session_nowait`` (so it counts in capacity, total and per principal, is bound to the
caller's principal, has an idle deadline and a lifetime, and has events and statistics), and its
id is the handle. A tool declared with `session_tool` (``MCPServer``) or run through
`call_with_session` (low-level ``Server``) takes an optional ``session`` argument: given, the
body runs in the handle's actor task, where `current_session` returns the handle's `McpSession`;
omitted, the body runs as before (the protocol session's, if there is one).

Calls on one handle run **one at a time**, in arrival order: the handle's actor takes one
message from its mailbox, runs the tool body to completion, then takes the next. So
``current_session().state`` needs no lock, and a body that awaits sees no other call's changes
in the middle; a slow call delays the next one on the same handle (not on other handles).

Errors are tool results (``isError: true``) with structured content ``{"error": CODE,
"message": ...}``: ``session-not-found`` (never existed, another principal's, or forgotten),
``session-expired`` (a deadline ended it), ``session-closed`` (``close_session``, a shutdown,
anything else), and ``capacity`` (`open_session` refused, or a passivated handle could not be
activated; ``retry_after`` seconds); for durable handles also ``session-moved`` (the handle
was activated again elsewhere; its state there is newer) and ``state-not-saved`` (the store
did not confirm the call's state change). Telling an ended handle from an unknown one takes a
bounded memory of recently ended handles, per supervisor: `DEFAULT_REMEMBER` ids for
`DEFAULT_REMEMBER_FOR` seconds (see `state_handles`).

Durable handles: when the supervisor has a store, every handle is a durable session (its actor
registered as `DURABLE_NAME`, ``"mcp-handle"``). ``current_session().state`` is restored when
the handle's actor starts (after a passivation at its idle timeout, a crash, a restart of the
process, on another node) and saved write-through: a call that changed it (as JSON text) is
answered once the store has confirmed the save. A handle that is not live here is activated
from the store on its next call (`Supervisor.activate`), then its principal is checked as for
a live one; the store does not tell the principal before, so another principal's call leaves
it activated (it passivates again at its idle timeout) and gets ``session-not-found``. A
passivated handle whose retention ran out is gone from the store: ``session-expired`` on the
node that passivated it (remembered as ended handles are), ``session-not-found`` elsewhere.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import typing
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, Final, TypeVar, final

import attrs
import mcp_types as types
import outcome
import trio
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.mcpserver import MCPServer
from pydantic import Field

from .. import (
    CapacityError,
    Session,
    SessionClosed,
    SessionNotFound,
    Supervisor,
    SupervisorClosed,
    Transport,
)
from .._durable import ActiveElsewhere, StoreError, Superseded
from .._ids import short_id
from ._session import _CURRENT, McpSession, _create_now, _Durability, current_session

if typing.TYPE_CHECKING:
    from .. import SessionContext

__all__ = [
    "DEFAULT_REMEMBER",
    "DEFAULT_REMEMBER_FOR",
    "DURABLE_NAME",
    "HANDLE_ERA",
    "SESSION_ARGUMENT_DESCRIPTION",
    "SESSION_TOOLS",
    "HandleError",
    "StateHandles",
    "add_session_tools",
    "call_session_tool",
    "call_with_session",
    "close_session",
    "open_session",
    "run_in_session",
    "serving_stateless",
    "session_tool",
    "state_handles",
    "with_session_argument",
]

logger = logging.getLogger("supervisor.mcp")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: The protocol era handles belong to, recorded in each handle's metadata (``"era"``).
HANDLE_ERA: Final = "2026-07-28"

#: How many recently ended handles each supervisor remembers (to answer ``session-expired`` or
#: ``session-closed`` rather than ``session-not-found``).
DEFAULT_REMEMBER: Final = 10_000

#: How long (seconds, trio clock) an ended handle is remembered.
DEFAULT_REMEMBER_FOR: Final = 3600.0

#: The description of the ``session`` argument in every session tool's input schema.
SESSION_ARGUMENT_DESCRIPTION: Final = (
    "Optional state handle returned by the open_session tool. Pass the same value on every "
    "call that should share state (counters, carts, drafts); omit it for a one-off call. "
    "If a call answers session-expired, session-closed or session-not-found, call "
    "open_session for a new handle and start over."
)

#: The name `StateHandles` registers the handles' actor under (`Supervisor.register_durable`).
DURABLE_NAME: Final = "mcp-handle"

#: The metadata key marking a session as a state handle.
_MARK: Final = "state_handle"

#: Close reasons that make an ended handle ``session-expired`` (the core's deadlines).
_EXPIRED_REASONS: Final = frozenset({"idle-timeout", "init-timeout", "max-lifetime"})

#: The close reason `close_session` gives the core.
CLOSED_BY_CLIENT: Final = "closed-by-client"

# Declared as a string, accepted as anything: a value that is not a handle string must get
# the `session-not-found` tool error, not the SDK's argument validation error.
_SessionArgument = Annotated[
    Any, Field(description=SESSION_ARGUMENT_DESCRIPTION, json_schema_extra={"type": "string"})
]
_HandleArgument = Annotated[Any, Field(json_schema_extra={"type": "string"})]


class HandleError(Exception):
    """A state handle cannot serve this call; `result` is the tool error to answer with.

    Attributes:
        code: ``"session-not-found"``, ``"session-expired"``, ``"session-closed"``,
            ``"capacity"``, ``"session-moved"`` or ``"state-not-saved"``.
        message: A sentence for the model or the user.
        retry_after: For ``capacity``: seconds after which `open_session` may succeed.
    """

    def __init__(self, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def result(self) -> types.CallToolResult:
        """The tool error: ``isError`` true, structured ``{"error": code, "message": ...}``."""
        structured: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.retry_after is not None:
            structured["retry_after"] = self.retry_after
        return types.CallToolResult(
            content=[types.TextContent(text=f"{self.code}: {self.message}")],
            structured_content=structured,
            is_error=True,
        )


def _not_found() -> HandleError:
    return HandleError(
        "session-not-found",
        "no such session: call open_session for a new one",
    )


def _ended(code: str) -> HandleError:
    if code == "session-expired":
        return HandleError(
            code, "the session expired (idle or lifetime limit): call open_session for a new one"
        )
    return HandleError(code, "the session was closed: call open_session for a new one")


def _code_for(reason: str | None) -> str:
    return "session-expired" if reason in _EXPIRED_REASONS else "session-closed"


@final
@attrs.define(slots=True, eq=False)
class _Caller:
    """Who is calling: the supervisor serving the request, its principal, its transport."""

    supervisor: Supervisor
    principal: str | None
    transport: Transport
    protocol_version: str | None = None


_STATELESS: contextvars.ContextVar[_Caller] = contextvars.ContextVar("supervisor_mcp_stateless")


@contextmanager
def serving_stateless(
    supervisor: Supervisor, principal: str | None, transport: Transport = Transport.HTTP
) -> Iterator[None]:
    """Mark the current task as serving a sessionless request for ``principal``.

    Transports call it around the SDK's stateless (2026-07-28) path, which runs handlers in
    this task or its children, so session tools there can open and use state handles.
    """
    token = _STATELESS.set(_Caller(supervisor, principal, transport, HANDLE_ERA))
    try:
        yield
    finally:
        _STATELESS.reset(token)


def _caller() -> _Caller:
    caller = _STATELESS.get(None)
    if caller is not None:
        return caller
    try:
        mcp_session = current_session()
    except LookupError:
        raise HandleError(
            "session-not-found",
            "state handles need a server served by supervisor.mcp",
        ) from None
    ctx = mcp_session.context
    return _Caller(
        ctx.supervisor,
        ctx.session.principal,
        mcp_session.transport,
        ctx.session.protocol_version,
    )


@final
@attrs.define(slots=True, eq=False)
class _Work:
    fn: Callable[[], Awaitable[Any]]
    #: The handles whose bodies are waiting on this call (outermost first), with their sessions.
    waiting: tuple[McpSession, ...] = ()
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)


#: Inside a handle's body: that handle and the handles whose bodies wait on it. A body that
#: calls one of them runs inline: queueing behind a body that waits on it would never end.
_WAITING: contextvars.ContextVar[tuple[McpSession, ...]] = contextvars.ContextVar(
    "supervisor_mcp_waiting_handles", default=()
)


def _moved() -> HandleError:
    return HandleError(
        "session-moved",
        "the session was activated again elsewhere: this call's change is not saved; retry it",
    )


def _not_saved() -> HandleError:
    return HandleError(
        "state-not-saved",
        "the session's state could not be saved: this call's change is not durable; retry it",
        retry_after=1.0,
    )


def _refused(exc: CapacityError | SupervisorClosed) -> HandleError:
    """The ``capacity`` tool error for a refused `StateHandles.open`."""
    if isinstance(exc, SupervisorClosed):
        return HandleError(
            "capacity", "the server is shutting down: retry elsewhere or later", retry_after=1.0
        )
    return HandleError(
        "capacity", "the server is at capacity: retry open_session later", retry_after=1.0
    )


@final
class StateHandles:
    """The state handles of one supervisor, and its memory of recently ended ones.

    Get it with `state_handles` (one per supervisor); not for users to construct. The memory
    keeps at most ``remember`` ended handles, each for ``remember_for`` seconds of trio's clock
    (oldest forgotten first), with the principal that owned it and whether it expired or was
    closed. Each entry is about 200 bytes, so the defaults hold about 2 MB at most.

    ``durable`` (default: when the supervisor has a store) makes new handles durable
    sessions, their actor registered as `DURABLE_NAME` (see the module docstring).

    Raises:
        ValueError: ``durable=True`` without a store.
    """

    __slots__ = (
        "__weakref__",
        "_ended",
        "_retained",
        "durable",
        "remember",
        "remember_for",
        "supervisor",
    )

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        remember: int = DEFAULT_REMEMBER,
        remember_for: float = DEFAULT_REMEMBER_FOR,
        durable: bool | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.remember = remember
        self.remember_for = remember_for
        # id -> (principal, code, ended at); insertion order is end order.
        self._ended: OrderedDict[str, tuple[str | None, str, float]] = OrderedDict()
        # Handles this node passivated: id -> (principal, when their retention ends), so a
        # call after it ran out answers session-expired (as bounded as the ended ones).
        self._retained: OrderedDict[str, tuple[str | None, float]] = OrderedDict()
        self.durable = False
        self._set_durable(durable)

    def _set_durable(self, durable: bool | None) -> None:
        if durable is None:
            durable = self.supervisor.store is not None
        elif durable and self.supervisor.store is None:
            raise ValueError("durable=True needs a supervisor with a store")
        if durable:
            self.supervisor.register_durable(DURABLE_NAME, self._actor)
        self.durable = durable

    def __repr__(self) -> str:
        return f"<StateHandles remembering {len(self._ended)} ended>"

    @property
    def remembered(self) -> int:
        """How many ended handles are remembered now (bounded by ``remember``)."""
        self._forget(trio.current_time())
        return len(self._ended)

    def open(
        self,
        *,
        principal: str | None,
        transport: Transport,
        metadata: Mapping[str, Any] | None = None,
    ) -> Session:
        """Create a handle (a session of the core) for ``principal``; never blocks.

        Raises:
            HandleError: ``capacity`` when `max_sessions` or the principal's limit is reached,
                or the supervisor is shutting down.
        """
        meta = {"era": HANDLE_ERA, _MARK: True, **(metadata or {})}
        try:
            session = self.supervisor.create_session_nowait(
                self._actor,
                transport=transport,
                principal=principal,
                metadata=meta,
                durable=self.durable,
            )
        except (CapacityError, SupervisorClosed) as exc:
            raise _refused(exc) from None
        logger.debug("state handle %s... opened", short_id(session.id))
        return session

    async def open_async(
        self,
        *,
        principal: str | None,
        transport: Transport,
        metadata: Mapping[str, Any] | None = None,
    ) -> Session:
        """`open`, which in cluster mode takes the slot from the cluster (a round trip when
        this node holds no spare slot); without a cluster it is `open`.

        Raises:
            HandleError: as `open`.
        """
        meta = {"era": HANDLE_ERA, _MARK: True, **(metadata or {})}
        try:
            session = await _create_now(
                self.supervisor,
                self._actor,
                transport=transport,
                principal=principal,
                metadata=meta,
                durable=self.durable,
            )
        except (CapacityError, SupervisorClosed) as exc:
            raise _refused(exc) from None
        logger.debug("state handle %s... opened", short_id(session.id))
        return session

    def resolve(self, handle: str, *, principal: str | None) -> Session:
        """The live handle ``handle`` of ``principal`` (live here: see `resolve_async`).

        Raises:
            HandleError: ``session-not-found`` (unknown, not a handle, another principal's,
                or forgotten), ``session-expired`` or ``session-closed``.
        """
        try:
            session = self.supervisor.get_session(handle)
        except SessionNotFound:
            raise self._gone(handle, principal) from None
        return self._check(session, principal)

    async def resolve_async(self, handle: str, *, principal: str | None) -> Session:
        """`resolve`, which activates a passivated handle from the store first (when the
        supervisor has one; see the module docstring).

        Raises:
            HandleError: as `resolve`; ``capacity`` when the handle cannot be activated here
                now (no slot, held by another live node, the store failed).
        """
        try:
            live: Session | None = self.supervisor.get_session(handle)
        except SessionNotFound:
            live = None
        if (
            live is not None
            and live.passivating
            and live.metadata.get(_MARK)
            and live.principal == principal
        ):
            live = None  # passivating now: activated again once it has passivated
        session = live if live is not None else await self._activate(handle, principal)
        return self._check(session, principal)

    async def _activate(self, handle: str, principal: str | None) -> Session:
        if self.supervisor.store is None:
            raise self._gone(handle, principal)
        try:
            return await self.supervisor.activate(handle)
        except SessionNotFound:
            raise self._gone(handle, principal) from None
        except (CapacityError, SupervisorClosed) as exc:
            raise _refused(exc) from None
        except ActiveElsewhere:
            # In cluster mode the forwarding layer relays such a call before it gets here.
            raise HandleError(
                "capacity",
                "the session is active on another node and cannot be reached from here: retry",
                retry_after=1.0,
            ) from None
        except StoreError as exc:
            logger.warning("activating state handle %s... failed: %s", short_id(handle), exc)
            raise HandleError(
                "capacity", "the session store failed: retry later", retry_after=1.0
            ) from None

    @staticmethod
    def _check(session: Session, principal: str | None) -> Session:
        if not session.metadata.get(_MARK) or session.principal != principal:
            raise _not_found()
        reason = session.close_reason
        if reason is not None:
            raise _ended(_code_for(reason))
        return session

    def close(self, handle: str, *, principal: str | None) -> None:
        """End the live handle (its terminal event has reason ``"closed-by-client"``).

        Raises:
            HandleError: as `resolve`.
        """
        self.resolve(handle, principal=principal)
        self.supervisor.close_session(handle, reason=CLOSED_BY_CLIENT)

    async def close_async(self, handle: str, *, principal: str | None) -> None:
        """`close`, for a passivated handle too (activated, then closed: it ends for good).

        Raises:
            HandleError: as `resolve_async`.
        """
        await self.resolve_async(handle, principal=principal)
        self.supervisor.close_session(handle, reason=CLOSED_BY_CLIENT)

    async def run(self, handle: str, fn: Callable[[], Awaitable[T]], *, principal: str | None) -> T:
        """Run ``fn()`` in the handle's actor task, after the calls queued before it.

        Cancelling the caller cancels ``fn`` (or drops it, if it has not started). What ``fn``
        raises is raised here.

        Raises:
            HandleError: as `resolve_async`, also when the handle ends before ``fn`` has run;
                ``session-moved`` or ``state-not-saved`` when ``fn`` changed a durable
                handle's state and the save was refused or failed.
        """
        session = await self.resolve_async(handle, principal=principal)
        work = _Work(fn, _WAITING.get())
        try:
            try:
                answer: outcome.Outcome[T] = await self.supervisor.call(handle, work)
            except (SessionNotFound, SessionClosed) as exc:
                if self.supervisor.store is None or not (
                    isinstance(exc, SessionNotFound) or session.passivating
                ):
                    raise
                # It passivated since: ``fn`` has not run (an idle session has no call in
                # flight, and the mailbox it had is dropped); once more, activated again.
                await self.resolve_async(handle, principal=principal)
                answer = await self.supervisor.call(handle, work)
        except (SessionNotFound, SessionClosed):
            raise self._after_end(handle, principal) from None
        except BaseException:
            work.scope.cancel()
            raise
        return answer.unwrap()

    def ended(self, handle: str, *, principal: str | None) -> str | None:
        """``session-expired`` or ``session-closed`` if ``principal``'s ``handle`` ended lately."""
        self._forget(trio.current_time())
        entry = self._ended.get(handle)
        if entry is None or entry[0] != principal:
            return None
        return entry[1]

    def _gone(self, handle: str, principal: str | None) -> HandleError:
        code = self.ended(handle, principal=principal)
        if code is None:
            retained = self._retained.get(handle)
            if (
                retained is not None
                and retained[0] == principal
                and trio.current_time() >= retained[1]
            ):
                code = "session-expired"  # passivated here, and its retention ran out
        return _not_found() if code is None else _ended(code)

    def _passivated(self, session: Session) -> None:
        now = trio.current_time()
        retained = self._retained
        retained.pop(session.id, None)
        retained[session.id] = (session.principal, now + self.supervisor.config.retention)
        horizon = now - self.remember_for  # forgotten a remember_for after its retention
        while retained and (
            len(retained) > self.remember or next(iter(retained.values()))[1] <= horizon
        ):
            retained.popitem(last=False)

    def _after_end(self, handle: str, principal: str | None) -> HandleError:
        try:
            self.resolve(handle, principal=principal)
        except HandleError as exc:
            return exc
        return _ended("session-closed")  # pragma: no cover - the call saw it ending

    def _record(self, session: Session) -> None:
        now = trio.current_time()
        self._forget(now)
        self._ended[session.id] = (session.principal, _code_for(session.close_reason), now)
        while len(self._ended) > self.remember:
            self._ended.popitem(last=False)

    def _forget(self, now: float) -> None:
        ended = self._ended
        horizon = now - self.remember_for
        while ended:
            oldest = next(iter(ended.values()))
            if oldest[2] > horizon:
                break
            ended.popitem(last=False)

    async def _actor(self, ctx: SessionContext[Any]) -> None:
        session = McpSession._restored(ctx, ctx.session.transport)
        durability = _Durability.of(ctx, session)
        try:
            if not ctx.session.is_initialized:  # restored handles start READY
                ctx.initialize(protocol_version=HANDLE_ERA)
            async for message in ctx.mailbox:
                work = message.payload
                if not isinstance(work, _Work):
                    message.fail(TypeError("a state handle takes only tool calls"))
                    continue
                token = _CURRENT.set(session)
                waiting = _WAITING.set((*work.waiting, session))
                answer: outcome.Outcome[Any] = outcome.Error(
                    trio.TooSlowError("the call was cancelled")
                )
                try:
                    with work.scope:
                        answer = outcome.Value(await work.fn())
                except Exception as exc:
                    answer = outcome.Error(exc)
                finally:
                    _WAITING.reset(waiting)
                    _CURRENT.reset(token)
                if durability is not None:
                    # Write-through: the answer leaves once the state it follows is saved.
                    try:
                        await durability.settle()
                    except Superseded:
                        answer = outcome.Error(_moved())
                    except (StoreError, SessionClosed) as exc:
                        logger.warning(
                            "state handle %s...: state not saved: %s", short_id(ctx.id), exc
                        )
                        answer = outcome.Error(_not_saved())
                message.reply(answer)
        finally:
            # The core decided the close reason once; recorded before the handle leaves the
            # registry, so no lookup in between can miss both. A passivation is no end: the
            # handle is activated again from the store (a restart is none either, and the
            # live session is found first).
            if not ctx.session.passivating:
                self._record(ctx.session)
            else:
                self._passivated(ctx.session)


_REGISTRY: weakref.WeakKeyDictionary[Supervisor, StateHandles] = weakref.WeakKeyDictionary()


def state_handles(
    supervisor: Supervisor,
    *,
    remember: int | None = None,
    remember_for: float | None = None,
    durable: bool | None = None,
) -> StateHandles:
    """The `StateHandles` of ``supervisor`` (created on first use).

    Args:
        remember: Set how many ended handles to remember (default `DEFAULT_REMEMBER`).
        remember_for: Set for how many seconds (default `DEFAULT_REMEMBER_FOR`).
        durable: Set whether new handles are durable (default, at creation: when the
            supervisor has a store).

    Raises:
        ValueError: a negative ``remember`` or ``remember_for``; ``durable=True`` without a
            store.
    """
    handles = _REGISTRY.get(supervisor)
    if handles is None:
        handles = _REGISTRY[supervisor] = StateHandles(supervisor, durable=durable)
    elif durable is not None:
        handles._set_durable(durable)
    if remember is not None:
        if remember < 0:
            raise ValueError("remember must be >= 0")
        handles.remember = remember
    if remember_for is not None:
        if remember_for < 0:
            raise ValueError("remember_for must be >= 0")
        handles.remember_for = remember_for
    return handles


async def run_in_session(handle: str | None, fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn()`` in the session the call selects.

    ``handle`` None: in the current task (the protocol session's, if any; in the stateless
    2026-07-28 era `current_session` raises `LookupError` there, as without handles). A
    handle: in that handle's actor task, one call at a time (see the module docstring).

    Raises:
        HandleError: the handle cannot serve the call (not a str, unknown, another principal's,
            expired, closed).
    """
    if handle is None:
        return await fn()
    if not isinstance(handle, str) or not handle:
        raise HandleError("session-not-found", "the session argument must be a handle string")
    for waiting in _WAITING.get():
        if waiting.id == handle:
            # This handle's body is waiting on the current call (or is the current call):
            # queueing behind it would never end, so run here, as that handle's session.
            token = _CURRENT.set(waiting)
            try:
                return await fn()
            finally:
                _CURRENT.reset(token)
    caller = _caller()
    return await state_handles(caller.supervisor).run(handle, fn, principal=caller.principal)


def session_tool(fn: F) -> F:
    """Declare an ``MCPServer`` tool that uses a session: ``server.tool()(session_tool(fn))``.

    Adds an optional keyword argument ``session`` (a string, described in the input schema as
    `SESSION_ARGUMENT_DESCRIPTION`). Without it the tool runs as it would undecorated; with a
    handle it runs in the handle's actor (see `run_in_session`), and a handle that cannot serve
    answers the `HandleError` tool error instead. ``fn`` may be sync or async and may take the
    SDK's ``Context``; it must not have a parameter named ``session``.

    Raises:
        TypeError: ``fn`` already has a ``session`` parameter.
    """
    signature = inspect.signature(fn, eval_str=True)
    if "session" in signature.parameters:
        raise TypeError(f"{fn.__name__} already has a parameter named 'session'")
    hints = typing.get_type_hints(fn, include_extras=True)

    @functools.wraps(fn)
    async def wrapper(*args: Any, session: str | None = None, **kwargs: Any) -> Any:
        async def body() -> Any:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

        try:
            return await run_in_session(session, body)
        except HandleError as exc:
            return exc.result()

    params = list(signature.parameters.values())
    extra = inspect.Parameter(
        "session", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=_SessionArgument
    )
    at = len(params)
    if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD:
        at -= 1
    params.insert(at, extra)
    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**hints, "session": _SessionArgument}
    return typing.cast(F, wrapper)


def with_session_argument(tool: types.Tool) -> types.Tool:
    """A copy of ``tool`` whose input schema has the optional ``session`` string argument."""
    schema = dict(tool.input_schema)
    properties = dict(schema.get("properties") or {})
    properties["session"] = {"type": "string", "description": SESSION_ARGUMENT_DESCRIPTION}
    schema["properties"] = properties
    schema.setdefault("type", "object")
    return tool.model_copy(update={"input_schema": schema})


async def call_with_session(
    arguments: Mapping[str, Any] | None,
    body: Callable[[dict[str, Any]], Awaitable[types.CallToolResult]],
) -> types.CallToolResult:
    """Run a low-level ``call_tool`` body in the session its ``session`` argument selects.

    ``body`` gets the arguments without ``session``. List the tool with
    `with_session_argument`. A handle that cannot serve answers the `HandleError` tool error.
    """
    rest = dict(arguments or {})
    handle = rest.pop("session", None)
    try:
        return await run_in_session(handle, functools.partial(body, rest))
    except HandleError as exc:
        return exc.result()


# -- open_session / close_session ---------------------------------------------------------------


async def open_session() -> types.CallToolResult:
    """The ``open_session`` tool: mint a handle for the caller (structured ``{"session": h}``)."""
    try:
        caller = _caller()
        handles = state_handles(caller.supervisor)
        session = await handles.open_async(principal=caller.principal, transport=caller.transport)
    except HandleError as exc:
        return exc.result()
    idle = caller.supervisor.config.idle_timeout
    return types.CallToolResult(
        content=[
            types.TextContent(
                text=(
                    f"Opened session {session.id}. Pass session={session.id!r} to tools that "
                    f"keep state; it expires after {idle:g} seconds without a call. "
                    "Call close_session when done."
                )
            )
        ],
        structured_content={"session": session.id},
    )


async def close_session(session: _HandleArgument = None) -> types.CallToolResult:
    """The ``close_session`` tool: end the caller's handle ``session`` (structured echo)."""
    try:
        if not isinstance(session, str) or not session:
            raise HandleError("session-not-found", "the session argument must be a handle string")
        caller = _caller()
        await state_handles(caller.supervisor).close_async(session, principal=caller.principal)
    except HandleError as exc:
        return exc.result()
    return types.CallToolResult(
        content=[types.TextContent(text="Session closed.")],
        structured_content={"session": session, "closed": True},
    )


_HANDLE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"session": {"type": "string"}},
    "required": ["session"],
}

#: The two tools as listed by a low-level ``Server`` (see `call_session_tool`).
SESSION_TOOLS: Final[tuple[types.Tool, ...]] = (
    types.Tool(
        name="open_session",
        description=(
            "Open a session and return its handle ({'session': handle}). Pass the handle as "
            "the 'session' argument of later calls to keep state between them."
        ),
        input_schema={"type": "object", "properties": {}},
    ),
    types.Tool(
        name="close_session",
        description="Close a session opened with open_session; its handle stops working.",
        input_schema={
            "type": "object",
            "properties": {
                "session": {"type": "string", "description": "the handle from open_session"}
            },
            "required": ["session"],
        },
    ),
)


async def call_session_tool(
    name: str, arguments: Mapping[str, Any] | None
) -> types.CallToolResult | None:
    """Serve ``open_session`` / ``close_session`` in a low-level ``call_tool`` handler.

    Returns None for any other tool name (the handler serves it itself).
    """
    if name == "open_session":
        return await open_session()
    if name == "close_session":
        return await close_session((arguments or {}).get("session"))
    return None


def add_session_tools(server: Server[Any] | MCPServer[Any]) -> None:
    """Add the ``open_session`` and ``close_session`` tools to ``server``.

    An ``MCPServer`` gets them with ``add_tool``; a low-level ``Server`` gets its ``tools/list``
    and ``tools/call`` handlers wrapped (install those handlers first).

    Raises:
        TypeError: ``server`` is neither.
        ValueError: a low-level ``Server`` without a ``tools/list`` or ``tools/call`` handler.
    """
    if isinstance(server, MCPServer):
        server.add_tool(open_session, name="open_session", description=SESSION_TOOLS[0].description)
        server.add_tool(
            close_session, name="close_session", description=SESSION_TOOLS[1].description
        )
        return
    if not isinstance(server, Server):
        raise TypeError(f"expected an mcp Server or MCPServer, got {type(server)!r}")
    list_entry = server.get_request_handler("tools/list")
    call_entry = server.get_request_handler("tools/call")
    if list_entry is None or call_entry is None:
        raise ValueError("the server needs tools/list and tools/call handlers first")
    list_tools = list_entry.handler
    call_tool = call_entry.handler

    async def listed(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> Any:
        result = await list_tools(ctx, params)
        if isinstance(result, types.ListToolsResult) and (params is None or params.cursor is None):
            result = result.model_copy(update={"tools": [*SESSION_TOOLS, *result.tools]})
        return result

    async def called(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> Any:
        answer = await call_session_tool(params.name, params.arguments)
        if answer is not None:
            return answer
        return await call_tool(ctx, params)

    server.add_request_handler("tools/list", types.PaginatedRequestParams, listed)
    server.add_request_handler("tools/call", types.CallToolRequestParams, called)
