"""Fixture server for the official MCP conformance suite (``@modelcontextprotocol/conformance``).

It exposes, with the official ``mcp`` SDK (``MCPServer``), every tool, resource,
prompt and handler that the suite's *server* scenarios call, with the names,
arguments and answers the scenarios check (see ``docs/conformance.md`` for the
list, and ``conformance list --server``), for both suite versions we run: 0.1.16
(the handshake era) and 0.2.0-alpha.12 (adds the 2026-07-28 era: input-required
results with a sealed ``requestState``, a ``-32021`` capability check, an
``x-mcp-header`` parameter, and the tasks extension, built in ``tests/conformance/tasks.py``
on the SDK's extension hook since the SDK implements none).

Only anyio calls are used inside handlers (``anyio.sleep``), so the server runs
unchanged on trio, whichever component serves it:

* ``tests/conformance/run_sdk_server.py`` serves it with the SDK's own
  ``StreamableHTTPSessionManager`` on ``hypercorn.trio``;
* our own adapter (``supervisor.mcp``) can serve the same object.

Public names:

* ``build_server()`` -> a fresh ``MCPServer`` (build one per served app: the SDK's
  session manager may only be run once per server object);
* ``server``: one module-level instance, for components that want an attribute;
* ``InMemoryEventStore`` / ``build_event_store()``: the event store the
  ``server-sse-polling`` scenario needs for SSE resumability (SEP-1699);
* ``RETRY_INTERVAL_MS``: the SSE ``retry:`` value to hand to the transport.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import os
from typing import Annotated, Any

import anyio
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer, UserMessage
from mcp.server.mcpserver.prompts.base import Message
from mcp.server.mcpserver.tools import Tool
from mcp.server.request_state import RequestStateSecurity
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    AudioContent,
    CallToolResult,
    ClientCapabilities,
    CompleteRequestParams,
    CompleteResult,
    Completion,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    InputRequest,
    InputRequiredResult,
    InputResponse,
    JSONRPCMessage,
    ListRootsRequest,
    ListRootsResult,
    MissingRequiredClientCapabilityErrorData,
    SamplingCapability,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from pydantic import Field

from tests.conformance.tasks import TasksExtension

__all__ = [
    "RETRY_INTERVAL_MS",
    "SERVER_NAME",
    "InMemoryEventStore",
    "build_event_store",
    "build_server",
    "server",
]

logger = logging.getLogger(__name__)

SERVER_NAME = "mcp-conformance-test-server"
RETRY_INTERVAL_MS = 100
"""SSE ``retry:`` hint (ms) for the polling scenario: the client reconnects quickly."""

# 1x1 PNG and a minimal (empty) WAV, base64.
TEST_IMAGE_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4"
    "2mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
TEST_AUDIO_BASE64 = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

JSON_SCHEMA_2020_12 = "https://json-schema.org/draft/2020-12/schema"
JSON_SCHEMA_TOOL_INPUT: dict[str, Any] = {
    "$schema": JSON_SCHEMA_2020_12,
    "type": "object",
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
    },
    "additionalProperties": False,
}

ELICITATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "username": {"type": "string", "description": "User's response"},
        "email": {"type": "string", "description": "User's email address"},
    },
    "required": ["username", "email"],
}

SEP1034_DEFAULTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
}

SEP1330_ENUMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "untitledSingle": {
            "type": "string",
            "description": "Untitled single-select",
            "enum": ["option1", "option2", "option3"],
        },
        "titledSingle": {
            "type": "string",
            "description": "Titled single-select",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "description": "Legacy titled enum (enumNames, deprecated)",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "description": "Untitled multi-select",
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
        "titledMulti": {
            "type": "array",
            "description": "Titled multi-select",
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
}


class InMemoryEventStore(EventStore):
    """Bounded in-memory event store, for SSE resumability (``Last-Event-ID``).

    Keeps at most ``max_events`` events (oldest dropped first), so a long-lived
    server (benchmarks) does not grow without bound.
    """

    def __init__(self, max_events: int = 10_000) -> None:
        self._events: collections.OrderedDict[str, tuple[str, JSONRPCMessage | None]] = (
            collections.OrderedDict()
        )
        self._max_events = max_events
        self._counter = 0

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        self._counter += 1
        event_id = str(self._counter)
        self._events[event_id] = (stream_id, message)
        while len(self._events) > self._max_events:
            self._events.popitem(last=False)
        return event_id

    async def replay_events_after(
        self, last_event_id: str, send_callback: EventCallback
    ) -> str | None:
        entry = self._events.get(last_event_id)
        if entry is None:
            return None
        stream_id = entry[0]
        after = int(last_event_id)
        for event_id, (sid, message) in list(self._events.items()):
            # priming events carry no message and are not replayed
            if sid == stream_id and int(event_id) > after and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


def build_event_store() -> InMemoryEventStore:
    return InMemoryEventStore()


def _text(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)])


def _json_schema_tool() -> Tool:
    def json_schema_2020_12_tool(
        name: str | None = None, address: dict[str, Any] | None = None
    ) -> str:
        return f"Received name={name!r} address={address!r}"

    tool = Tool.from_function(
        json_schema_2020_12_tool,
        description="Tool with JSON Schema 2020-12 features",
        structured_output=False,
    )
    # The suite checks that $schema, $defs and additionalProperties survive in
    # tools/list: advertise the exact 2020-12 schema (arguments are still
    # validated against the function signature above).
    tool.parameters = JSON_SCHEMA_TOOL_INPUT
    return tool


#: One ``requestState`` key for the whole process: our adapter builds a fixture per session (and
#: one for the sessionless era), so a state sealed by one instance must open in another. The
#: SDK's `RequestStateBoundary` seals what a handler returns and verifies every echo (a tampered
#: state is a -32602 error before the handler runs), so handlers see only plaintext they minted.
REQUEST_STATE_SECURITY = RequestStateSecurity(keys=[os.urandom(32)])


# -- input-required results (SEP-2322, the 2026-07-28 multi-round-trip requests) ---------------


def _ask(message: str, field: str, kind: str = "string") -> ElicitRequest:
    schema = {"type": "object", "properties": {field: {"type": kind}}, "required": [field]}
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def _sample(text: str, max_tokens: int) -> CreateMessageRequest:
    message = SamplingMessage(role="user", content=TextContent(type="text", text=text))
    return CreateMessageRequest(
        params=CreateMessageRequestParams(messages=[message], max_tokens=max_tokens)
    )


def _responses(ctx: Context[Any, Any]) -> dict[str, InputResponse]:
    return dict(ctx.input_responses or {})


def _answered(response: InputResponse | None, field: str) -> str:
    """What an elicitation response says for ``field`` (its action when not accepted)."""
    if not isinstance(response, ElicitResult):
        return "(no answer)"
    if response.action != "accept":
        return f"({response.action})"
    return str((response.content or {}).get(field, ""))


def _sampled(response: InputResponse | None) -> str:
    if isinstance(response, CreateMessageResult) and isinstance(response.content, TextContent):
        return response.content.text
    return "(no sampling response)"


def _roots(response: InputResponse | None) -> str:
    if isinstance(response, ListRootsResult):
        return ", ".join(str(root.uri) for root in response.roots) or "(no roots)"
    return "(no roots response)"


def _bad_state(state: str | None) -> MCPError:
    return MCPError(code=INVALID_PARAMS, message=f"requestState missing or unexpected: {state!r}")


def _missing_sampling() -> MCPError:
    data = MissingRequiredClientCapabilityErrorData(
        required_capabilities=ClientCapabilities(sampling=SamplingCapability())
    )
    return MCPError(
        code=MISSING_REQUIRED_CLIENT_CAPABILITY,
        message="This tool needs the client's sampling capability",
        data=data.model_dump(by_alias=True, mode="json", exclude_none=True),
    )


def _add_input_required(mcp: MCPServer[Any]) -> None:
    """Tools and a prompt answering with an `InputRequiredResult`, the scenarios' exact shapes."""

    @mcp.tool(
        description="Asks the user's name through an input-required result", structured_output=False
    )
    async def test_input_required_result_elicitation(
        ctx: Context[Any, Any],
    ) -> CallToolResult | InputRequiredResult:
        responses = _responses(ctx)
        if "user_name" not in responses:
            ask = _ask("What is your name?", "name")
            return InputRequiredResult(input_requests={"user_name": ask})
        return _text(f"Hello, {_answered(responses['user_name'], 'name')}!")

    @mcp.tool(
        description="Samples the client's LLM through an input-required result",
        structured_output=False,
    )
    async def test_input_required_result_sampling(
        ctx: Context[Any, Any],
    ) -> CallToolResult | InputRequiredResult:
        responses = _responses(ctx)
        if "capital_question" not in responses:
            ask = _sample("What is the capital of France?", 100)
            return InputRequiredResult(input_requests={"capital_question": ask})
        return _text(f"LLM response: {_sampled(responses['capital_question'])}")

    @mcp.tool(
        description="Lists the client's roots through an input-required result",
        structured_output=False,
    )
    async def test_input_required_result_list_roots(
        ctx: Context[Any, Any],
    ) -> CallToolResult | InputRequiredResult:
        responses = _responses(ctx)
        if "client_roots" not in responses:
            return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})
        return _text(f"Client roots: {_roots(responses['client_roots'])}")

    @mcp.tool(
        description="Round-trips an opaque requestState with an elicitation",
        structured_output=False,
    )
    async def test_input_required_result_request_state(
        ctx: Context[Any, Any],
    ) -> CallToolResult | InputRequiredResult:
        responses = _responses(ctx)
        if "confirm" not in responses:
            ask = _ask("Please confirm", "ok", "boolean")
            return InputRequiredResult(input_requests={"confirm": ask}, request_state="confirm")
        if ctx.request_state != "confirm":
            raise _bad_state(ctx.request_state)
        return _text(f"state-ok: confirmed={_answered(responses['confirm'], 'ok')}")

    @mcp.tool(
        description="Asks for an elicitation, a sampling and the roots at once",
        structured_output=False,
    )
    async def test_input_required_result_multiple_inputs(
        ctx: Context[Any, Any],
    ) -> CallToolResult | InputRequiredResult:
        responses = _responses(ctx)
        wanted: dict[str, InputRequest] = {
            "user_name": _ask("What is your name?", "name"),
            "greeting": _sample("Generate a greeting", 50),
            "client_roots": ListRootsRequest(),
        }
        missing = {key: ask for key, ask in wanted.items() if key not in responses}
        if missing:
            return InputRequiredResult(input_requests=missing, request_state="multiple-inputs")
        if ctx.request_state != "multiple-inputs":
            raise _bad_state(ctx.request_state)
        return _text(
            f"name={_answered(responses['user_name'], 'name')}; "
            f"greeting={_sampled(responses['greeting'])}; "
            f"roots={_roots(responses['client_roots'])}"
        )

    @mcp.tool(
        description="Two rounds of elicitation with an evolving requestState",
        structured_output=False,
    )
    async def test_input_required_result_multi_round(
        ctx: Context[Any, Any],
    ) -> CallToolResult | InputRequiredResult:
        responses = _responses(ctx)
        state = ctx.request_state
        if state is None or not responses:
            ask = _ask("Step 1: What is your name?", "name")
            return InputRequiredResult(input_requests={"step1": ask}, request_state="round-1")
        if state == "round-1" and "step1" in responses:
            name = _answered(responses["step1"], "name")
            ask = _ask("Step 2: What is your favorite color?", "color")
            round_2 = json.dumps({"round": 2, "name": name})
            return InputRequiredResult(input_requests={"step2": ask}, request_state=round_2)
        try:
            earlier = json.loads(state)
        except ValueError:
            raise _bad_state(state) from None
        if not isinstance(earlier, dict) or earlier.get("round") != 2 or "step2" not in responses:
            raise _bad_state(state)
        color = _answered(responses["step2"], "color")
        return _text(f"name={earlier.get('name')}; favorite color={color}")

    @mcp.tool(description="Issues an integrity-protected requestState", structured_output=False)
    async def test_input_required_result_tampered_state(
        ctx: Context[Any, Any],
    ) -> CallToolResult | InputRequiredResult:
        # A tampered echo never gets here: the SDK's request-state boundary rejects it.
        responses = _responses(ctx)
        if ctx.request_state != "untampered" or "confirm" not in responses:
            ask = _ask("Please confirm", "ok", "boolean")
            return InputRequiredResult(input_requests={"confirm": ask}, request_state="untampered")
        return _text("state-ok: the requestState verified")

    @mcp.tool(
        description="Asks only for input the client declared it can give", structured_output=False
    )
    async def test_input_required_result_capabilities(
        ctx: Context[Any, Any],
    ) -> CallToolResult | InputRequiredResult:
        responses = _responses(ctx)
        caps = ctx.client_capabilities or ClientCapabilities()
        wanted: dict[str, InputRequest] = {}
        if caps.sampling is not None:
            wanted["greeting"] = _sample("Generate a greeting", 50)
        if caps.elicitation is not None:
            wanted["user_name"] = _ask("What is your name?", "name")
        if caps.roots is not None:
            wanted["client_roots"] = ListRootsRequest()
        missing = {key: ask for key, ask in wanted.items() if key not in responses}
        if missing:
            return InputRequiredResult(input_requests=missing)
        return _text(f"answered: {', '.join(sorted(wanted)) or '(nothing to ask)'}")

    @mcp.prompt(description="A prompt that elicits its context first")
    async def test_input_required_result_prompt(
        ctx: Context[Any, Any],
    ) -> list[Message] | InputRequiredResult:
        responses = _responses(ctx)
        if "user_context" not in responses:
            ask = _ask("What context should the prompt use?", "context")
            return InputRequiredResult(input_requests={"user_context": ask})
        context = _answered(responses["user_context"], "context")
        return [UserMessage(content=TextContent(type="text", text=f"Use this context: {context}"))]


def _add_modern_diagnostics(mcp: MCPServer[Any]) -> None:
    """The 2026-07-28 scenarios' diagnostic tools: a capability check, list-change triggers
    and an x-mcp-header parameter."""

    @mcp.tool(
        description="Needs the client's sampling capability: -32021 when it is not declared",
        structured_output=False,
    )
    async def test_missing_capability(ctx: Context[Any, Any]) -> CallToolResult:
        caps = ctx.client_capabilities
        if caps is None or caps.sampling is None:
            raise _missing_sampling()
        return _text("The client declared sampling.")

    @mcp.tool(
        description="Announces a change of the tool list on subscriptions/listen streams",
        structured_output=False,
    )
    async def test_trigger_tool_change(ctx: Context[Any, Any]) -> CallToolResult:
        await ctx.notify_tools_changed()
        return _text("tools/list_changed sent")

    @mcp.tool(
        description="Announces a change of the prompt list on subscriptions/listen streams",
        structured_output=False,
    )
    async def test_trigger_prompt_change(ctx: Context[Any, Any]) -> CallToolResult:
        await ctx.notify_prompts_changed()
        return _text("prompts/list_changed sent")

    @mcp.tool(
        description="Echoes a region mirrored in the Mcp-Param-Region header (SEP-2243)",
        structured_output=False,
    )
    def test_custom_headers(
        region: Annotated[
            str, Field(description="A region name", json_schema_extra={"x-mcp-header": "Region"})
        ],
    ) -> CallToolResult:
        return _text(f"region={region}")


def build_server() -> MCPServer[Any]:
    """Build a fresh conformance fixture server (one per served app)."""
    mcp: MCPServer[Any] = MCPServer(
        SERVER_NAME,
        version="1.0.0",
        log_level="WARNING",
        instructions="Fixture server for the MCP conformance suite.",
        tools=[_json_schema_tool()],
        request_state_security=REQUEST_STATE_SECURITY,
        extensions=[TasksExtension()],
    )
    _add_input_required(mcp)
    _add_modern_diagnostics(mcp)
    subscriptions: set[str] = set()

    # -- tools ------------------------------------------------------------------

    @mcp.tool(description="Tests simple text content response", structured_output=False)
    def test_simple_text() -> str:
        return "This is a simple text response for testing."

    @mcp.tool(description="Tests image content response", structured_output=False)
    def test_image_content() -> list[ImageContent]:
        return [ImageContent(type="image", data=TEST_IMAGE_BASE64, mime_type="image/png")]

    @mcp.tool(description="Tests audio content response", structured_output=False)
    def test_audio_content() -> list[AudioContent]:
        return [AudioContent(type="audio", data=TEST_AUDIO_BASE64, mime_type="audio/wav")]

    @mcp.tool(description="Tests embedded resource content response", structured_output=False)
    def test_embedded_resource() -> list[EmbeddedResource]:
        return [
            EmbeddedResource(
                type="resource",
                resource=TextResourceContents(
                    uri="test://embedded-resource",
                    mime_type="text/plain",
                    text="This is an embedded resource content.",
                ),
            )
        ]

    @mcp.tool(
        description="Tests response with multiple content types (text, image, resource)",
        structured_output=False,
    )
    def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
        return [
            TextContent(type="text", text="Multiple content types test:"),
            ImageContent(type="image", data=TEST_IMAGE_BASE64, mime_type="image/png"),
            EmbeddedResource(
                type="resource",
                resource=TextResourceContents(
                    uri="test://mixed-content-resource",
                    mime_type="application/json",
                    text=json.dumps({"test": "data", "value": 123}),
                ),
            ),
        ]

    @mcp.tool(description="Tests tool that emits log messages during execution")
    async def test_tool_with_logging(ctx: Context[Any, Any]) -> CallToolResult:
        await ctx.info("Tool execution started")
        await anyio.sleep(0.05)
        await ctx.info("Tool processing data")
        await anyio.sleep(0.05)
        await ctx.info("Tool execution completed")
        return _text("Tool with logging executed successfully")

    @mcp.tool(description="Tests tool that reports progress notifications")
    async def test_tool_with_progress(ctx: Context[Any, Any]) -> CallToolResult:
        # report_progress is a no-op when the request carried no progressToken
        await ctx.report_progress(progress=0, total=100, message="Completed step 0 of 100")
        await anyio.sleep(0.05)
        await ctx.report_progress(progress=50, total=100, message="Completed step 50 of 100")
        await anyio.sleep(0.05)
        await ctx.report_progress(progress=100, total=100, message="Completed step 100 of 100")
        return _text("Tool with progress executed successfully")

    @mcp.tool(description="Tests error response handling")
    def test_error_handling() -> CallToolResult:
        return CallToolResult(
            content=[
                TextContent(
                    type="text", text="This tool intentionally returns an error for testing"
                )
            ],
            is_error=True,
        )

    @mcp.tool(description="Tests server-initiated sampling (LLM completion request)")
    async def test_sampling(prompt: str, ctx: Context[Any, Any]) -> CallToolResult:
        result = await ctx.session.create_message(
            messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
            max_tokens=100,
            related_request_id=ctx.request_id,
        )
        content = result.content
        text = content.text if isinstance(content, TextContent) else "No text response"
        return _text(f"LLM response: {text}")

    @mcp.tool(description="Tests server-initiated elicitation (user input request)")
    async def test_elicitation(message: str, ctx: Context[Any, Any]) -> CallToolResult:
        result = await ctx.session.elicit_form(
            message, ELICITATION_SCHEMA, related_request_id=ctx.request_id
        )
        return _text(
            f"User response: action={result.action}, content={json.dumps(result.content or {})}"
        )

    @mcp.tool(description="Tests elicitation with default values for primitive types (SEP-1034)")
    async def test_elicitation_sep1034_defaults(ctx: Context[Any, Any]) -> CallToolResult:
        result = await ctx.session.elicit_form(
            "Please provide user information",
            SEP1034_DEFAULTS_SCHEMA,
            related_request_id=ctx.request_id,
        )
        return _text(
            f"Elicitation completed: action={result.action}, "
            f"content={json.dumps(result.content or {})}"
        )

    @mcp.tool(description="Tests elicitation with enum schema variations (SEP-1330)")
    async def test_elicitation_sep1330_enums(ctx: Context[Any, Any]) -> CallToolResult:
        result = await ctx.session.elicit_form(
            "Please select values using different enum schema types",
            SEP1330_ENUMS_SCHEMA,
            related_request_id=ctx.request_id,
        )
        return _text(
            f"Elicitation completed: action={result.action}, "
            f"content={json.dumps(result.content or {})}"
        )

    @mcp.tool(description="Tests SSE polling by closing the stream mid-call (SEP-1699)")
    async def test_reconnection(ctx: Context[Any, Any]) -> CallToolResult:
        await ctx.info("Before disconnect")
        await ctx.close_sse_stream()
        await anyio.sleep(0.2)  # let the client reconnect with Last-Event-ID
        await ctx.info("After reconnect")
        return _text("Reconnection test completed")

    # -- resources --------------------------------------------------------------

    @mcp.resource(
        "test://static-text",
        name="static-text",
        description="A static text resource for testing",
        mime_type="text/plain",
    )
    def static_text() -> str:
        return "This is the content of the static text resource."

    @mcp.resource(
        "test://static-binary",
        name="static-binary",
        description="A static binary resource (image) for testing",
        mime_type="image/png",
    )
    def static_binary() -> bytes:
        return base64.b64decode(TEST_IMAGE_BASE64)

    @mcp.resource(
        "test://template/{id}/data",
        name="template-data",
        description="A resource template with parameter substitution",
        mime_type="application/json",
    )
    def template_data(id: str) -> str:
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    @mcp.resource(
        "test://watched-resource",
        name="watched-resource",
        description="A resource that can be subscribed to for updates",
        mime_type="text/plain",
    )
    def watched_resource() -> str:
        return "Watched resource content"

    # -- prompts ----------------------------------------------------------------

    @mcp.prompt(description="A simple prompt without arguments")
    def test_simple_prompt() -> list[UserMessage]:
        text = "This is a simple prompt for testing."
        return [UserMessage(content=TextContent(type="text", text=text))]

    @mcp.prompt(description="A prompt with required arguments")
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
        text = f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"
        return [UserMessage(content=TextContent(type="text", text=text))]

    @mcp.prompt(description="A prompt that includes an embedded resource")
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
        return [
            UserMessage(
                content=EmbeddedResource(
                    type="resource",
                    resource=TextResourceContents(
                        uri=resourceUri,
                        mime_type="text/plain",
                        text="Embedded resource content for testing.",
                    ),
                )
            ),
            UserMessage(
                content=TextContent(type="text", text="Please process the embedded resource above.")
            ),
        ]

    @mcp.prompt(description="A prompt that includes image content")
    def test_prompt_with_image() -> list[UserMessage]:
        return [
            UserMessage(
                content=ImageContent(type="image", data=TEST_IMAGE_BASE64, mime_type="image/png")
            ),
            UserMessage(content=TextContent(type="text", text="Please analyze the image above.")),
        ]

    # -- completion, subscriptions, logging level -------------------------------

    # MCPServer has no public (typed) registration for these: register them on
    # its low-level server, as the SDK's own everything-server does.
    lowlevel = mcp._lowlevel_server

    async def complete(
        ctx: ServerRequestContext[Any], params: CompleteRequestParams
    ) -> CompleteResult:
        argument = params.argument
        candidates = ["paris", "park", "party"] if argument.name == "arg1" else []
        values = [c for c in candidates if c.startswith(argument.value)]
        return CompleteResult(
            completion=Completion(values=values, total=len(values), has_more=False)
        )

    async def subscribe(
        ctx: ServerRequestContext[Any], params: SubscribeRequestParams
    ) -> EmptyResult:
        subscriptions.add(str(params.uri))
        return EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext[Any], params: UnsubscribeRequestParams
    ) -> EmptyResult:
        subscriptions.discard(str(params.uri))
        return EmptyResult()

    async def set_logging_level(
        ctx: ServerRequestContext[Any], params: SetLevelRequestParams
    ) -> EmptyResult:
        logger.debug("client asked for log level %s", params.level)
        return EmptyResult()

    lowlevel.add_request_handler("completion/complete", CompleteRequestParams, complete)
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)
    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_logging_level)

    return mcp


server = build_server()
"""A ready instance; call ``build_server()`` instead when serving it more than once."""
