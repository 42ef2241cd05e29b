"""Messages, mailboxes and the actor's context: send, send_nowait, call, reply, fail."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from supervisor import (
    MailboxFull,
    Message,
    SessionClosed,
    SessionContext,
    SessionNotFound,
    SessionState,
    open_supervisor,
)

from ._helpers import echo_actor


async def test_send_delivers_in_order_and_counts_messages() -> None:
    received: list[Any] = []
    done = trio.Event()

    async def collector(ctx: SessionContext[int]) -> None:
        async for msg in ctx.mailbox:
            assert not msg.expects_reply
            assert msg.reply("ignored") is False  # nobody waits for a one-way message
            received.append(msg.payload)
            if len(received) == 100:
                done.set()

    async with open_supervisor() as sup:
        session = sup.create_session_nowait(collector)
        for i in range(50):
            await sup.send(session.id, i)
        for i in range(50, 100):
            sup.send_nowait(session.id, i)
        await done.wait()
        assert received == list(range(100))
        assert session.messages_total == 100
        assert sup.statistics().messages_total == 100


async def test_send_nowait_raises_mailbox_full_and_send_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    release = trio.Event()

    async def stuck(ctx: SessionContext[Any]) -> None:
        await release.wait()
        async for _ in ctx.mailbox:
            pass

    async with open_supervisor(mailbox_size=3) as sup:
        session = sup.create_session_nowait(stuck)
        for i in range(3):
            sup.send_nowait(session.id, i)
        with pytest.raises(MailboxFull, match="full"):
            sup.send_nowait(session.id, 3)
        assert issubclass(MailboxFull, trio.WouldBlock)
        assert session.mailbox_depth == 3
        with trio.move_on_after(5) as scope:
            await sup.send(session.id, 3)  # backpressure: waits
        assert scope.cancelled_caught
        assert session.messages_total == 3  # the cancelled send delivered nothing
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.send, session.id, 4)
            await trio.sleep(1)
            release.set()
        assert session.messages_total == 4
        await trio.testing.wait_all_tasks_blocked()
        assert session.mailbox_depth == 0
        # 3 buffered + 1 sender waiting for room: the mark shows the backpressure
        assert sup.statistics().mailbox_high_water == 4


async def test_call_returns_the_reply_and_raises_what_the_actor_fails_with() -> None:
    class Refused(Exception):
        pass

    async def actor(ctx: SessionContext[str]) -> None:
        async for msg in ctx.mailbox:
            if msg.payload == "bad":
                assert msg.fail(Refused("no"))
            else:
                msg.reply(msg.payload.upper())

    async with open_supervisor() as sup:
        session = sup.create_session_nowait(actor)
        assert await sup.call(session.id, "hi") == "HI"
        with pytest.raises(Refused, match="no"):
            await sup.call(session.id, "bad")
        assert await sup.call(session.id, "still alive") == "STILL ALIVE"
        assert session.in_flight == 0
        assert sup.statistics().calls_total == 3


async def test_unknown_ids_raise_session_not_found() -> None:
    async with open_supervisor() as sup:
        with pytest.raises(SessionNotFound):
            await sup.call("nope", 1)
        with pytest.raises(SessionNotFound):
            await sup.send("nope", 1)
        with pytest.raises(SessionNotFound):
            sup.send_nowait("nope", 1)
        with pytest.raises(SessionNotFound):
            sup.touch("nope")
        with pytest.raises(SessionNotFound):
            sup.get_session("nope")
        with pytest.raises(KeyError):  # SessionNotFound is a KeyError too
            sup.get_metadata("nope", "k")
        assert sup.close_session("nope") is False
        assert not sup.has_session("nope")
        assert "nope" not in sup


async def test_call_timeout_raises_too_slow_and_leaves_nothing_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    late: list[bool] = []

    async def slow(ctx: SessionContext[Any]) -> None:
        async for msg in ctx.mailbox:
            await trio.sleep(10)
            late.append(msg.reply("late"))

    async with open_supervisor(idle_timeout=100.0, deadline_slack=0.0) as sup:
        session = sup.create_session_nowait(slow)
        with pytest.raises(trio.TooSlowError):
            await sup.call(session.id, "x", timeout=1)
        assert session.in_flight == 0  # the idle clock runs again
        await trio.sleep(20)
        assert late == [False]  # the answer after the caller gave up was dropped
        assert session.id in sup


async def test_abandoned_call_is_not_delivered(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[Any] = []
    gate = trio.Event()

    async def actor(ctx: SessionContext[Any]) -> None:
        await gate.wait()
        async for msg in ctx.mailbox:
            seen.append(msg.payload)
            msg.reply(None)

    async with open_supervisor() as sup:
        session = sup.create_session_nowait(actor)
        with trio.move_on_after(1):
            await sup.call(session.id, "given up")  # sits in the mailbox, then abandoned
        sup.send_nowait(session.id, "later")
        gate.set()
        await trio.sleep(1)
        assert seen == ["later"]


async def test_call_raises_session_closed_when_the_session_ends_before_replying() -> None:
    async def drops_calls(ctx: SessionContext[Any]) -> None:
        async for _msg in ctx.mailbox:
            return  # ends without answering

    async with open_supervisor() as sup:
        session = sup.create_session_nowait(drops_calls)
        with pytest.raises(SessionClosed, match="before replying"):
            await sup.call(session.id, "hello?")
        assert session.in_flight == 0


async def test_double_reply_is_a_programming_error() -> None:
    errors: list[BaseException] = []

    async def actor(ctx: SessionContext[Any]) -> None:
        async for msg in ctx.mailbox:
            msg.reply(1)
            try:
                msg.reply(2)
            except RuntimeError as exc:
                errors.append(exc)
            with pytest.raises(TypeError):
                msg.fail("not an exception")  # type: ignore[arg-type]

    async with open_supervisor() as sup:
        session = sup.create_session_nowait(actor)
        assert await sup.call(session.id, None) == 1
        await trio.testing.wait_all_tasks_blocked()
        assert len(errors) == 1


async def test_closing_session_refuses_new_messages_but_drains_buffered_ones() -> None:
    got: list[int] = []

    async def actor(ctx: SessionContext[int]) -> None:
        async for msg in ctx.mailbox:
            got.append(msg.payload)

    async with open_supervisor() as sup:
        session = sup.create_session_nowait(actor)
        for i in range(5):
            sup.send_nowait(session.id, i)
        assert sup.close_session(session.id)
        assert session.state is SessionState.CLOSING
        with pytest.raises(SessionClosed):
            sup.send_nowait(session.id, 99)
        with pytest.raises(SessionClosed):
            await sup.call(session.id, 99)
        assert sup.close_session(session.id) is False  # already closing
        await trio.testing.wait_all_tasks_blocked()
    assert got == [0, 1, 2, 3, 4]


async def test_context_gives_the_actor_its_session(autojump_clock: trio.testing.MockClock) -> None:
    seen: dict[str, Any] = {}

    async def actor(ctx: SessionContext[Any]) -> None:
        seen["same"] = ctx.session is ctx.supervisor.get_session(ctx.id)
        ctx.metadata["owner"] = "actor"
        ctx.set_state(SessionState.INITIALIZING)
        ctx.initialize(client_info={"name": "c"}, protocol_version="v", capabilities={})
        ctx.authenticate("alice")
        await trio.sleep(5)
        ctx.touch()
        async for msg in ctx.mailbox:
            msg.reply(ctx.closing)

    async with open_supervisor() as sup:
        session = sup.create_session_nowait(actor, metadata={"given": 1})
        await trio.sleep(6)
        assert seen["same"]
        assert session.metadata == {"given": 1, "owner": "actor"}
        assert sup.get_metadata(session.id, "owner") == "actor"
        assert sup.get_metadata(session.id, "missing", "dflt") == "dflt"
        assert session.state is SessionState.READY
        assert session.is_initialized and session.is_authenticated
        assert session.principal == "alice"
        assert session.client_info == {"name": "c"}
        assert session.protocol_version == "v"
        assert session.last_activity == pytest.approx(5.0)
        assert await sup.call(session.id, None) is False
        with pytest.raises(TypeError):
            session.metadata["x"] = 1  # type: ignore[index]


async def test_context_methods_after_the_session_ended_raise_session_closed() -> None:
    kept: list[SessionContext[Any]] = []

    async def actor(ctx: SessionContext[Any]) -> None:
        kept.append(ctx)

    async with open_supervisor() as sup:
        sup.create_session_nowait(actor)
        await trio.testing.wait_all_tasks_blocked()
        (ctx,) = kept
        with pytest.raises(SessionClosed):
            ctx.touch()
        with pytest.raises(SessionClosed):
            ctx.initialize()
        with pytest.raises(SessionClosed):
            ctx.start_soon(trio.sleep, 1)
        assert ctx.close() is False


async def test_message_repr_and_session_repr_do_not_leak_the_full_id() -> None:
    async with open_supervisor() as sup:
        session = sup.create_session_nowait(echo_actor)
        assert session.id not in repr(session)
        assert session.id[:8] in repr(session)
        msg: Message[str] = Message("p", session, 0)
        assert "send" in repr(msg)
        with pytest.raises(SessionNotFound) as info:
            sup.get_session(session.id[:-1] + "!")
        assert session.id[:-1] not in str(info.value)


# -- issue 9: hardening -------------------------------------------------------------------------


@pytest.mark.parametrize("mailbox_size", [0, 1])
async def test_a_reply_reported_delivered_reaches_the_caller_even_if_it_is_cancelled_next(
    autojump_clock: trio.testing.MockClock, mailbox_size: int
) -> None:
    """The full-mailbox path: the caller waits in ``send`` and is answered before it resumes."""
    delivered: list[bool] = []
    caller_scope = trio.CancelScope()
    received: list[Any] = []

    async def actor(ctx: SessionContext[Any]) -> None:
        await trio.sleep(1)  # let the mailbox fill up and the caller wait for room
        while True:
            # receive_nowait does not yield: the caller, just let out of its wait for room,
            # has not run yet when the answer is set.
            msg = ctx.mailbox.receive_nowait()
            ok = msg.reply(msg.payload * 2)
            delivered.append(ok)
            if msg.payload == 21:
                caller_scope.cancel()  # the caller is cancelled after it was answered
                return

    async with open_supervisor(mailbox_size=mailbox_size) as sup:
        session = sup.create_session_nowait(actor)
        if mailbox_size:
            sup.send_nowait(session.id, 0)  # fills the mailbox
        with caller_scope:
            received.append(await sup.call(session.id, 21))
        assert delivered[-1] is True
        assert received == [42]  # True means delivered
        assert session.in_flight == 0
        sup.close_all()


async def test_an_abandoned_or_late_call_never_makes_in_flight_negative(
    autojump_clock: trio.testing.MockClock,
) -> None:
    kept: list[Message[Any]] = []

    async def hoarder(ctx: SessionContext[Any]) -> None:
        async for msg in ctx.mailbox:
            kept.append(msg)
            return  # ends with the call unanswered

    async with open_supervisor() as sup:
        session = sup.create_session_nowait(hoarder)
        with pytest.raises(SessionClosed):
            await sup.call(session.id, "q")
        (msg,) = kept
        assert msg.reply("too late") is False
        assert session.in_flight == 0
        assert session.mailbox_depth == 0


async def test_mailbox_depth_is_zero_once_the_session_ended_with_messages_buffered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def ignores_its_mailbox(ctx: SessionContext[Any]) -> None:
        await trio.sleep(1)

    async with open_supervisor(mailbox_size=4) as sup:
        session = sup.create_session_nowait(ignores_its_mailbox)
        for n in range(4):
            sup.send_nowait(session.id, n)
        async with trio.open_nursery() as nursery:

            async def blocked_sender() -> None:
                with pytest.raises(SessionClosed):
                    await sup.send(session.id, "waits for room")

            nursery.start_soon(blocked_sender)
            await trio.testing.wait_all_tasks_blocked()
            assert session.mailbox_depth == 5
        assert session.id not in sup
        assert session.mailbox_depth == 0
