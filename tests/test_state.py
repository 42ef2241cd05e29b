from __future__ import annotations

import itertools

import pytest

from supervisor import LIVE_STATES, TRANSITIONS, InvalidTransition, SessionState, Transport
from supervisor._state import check_transition


def test_string_values_are_the_seeds() -> None:
    assert [s.value for s in SessionState] == [
        "created",
        "initializing",
        "ready",
        "closing",
        "closed",
        "error",
    ]
    assert [t.value for t in Transport] == ["stdio", "http", "websocket", "in-process"]
    assert SessionState("ready") is SessionState.READY
    assert Transport("in-process") is Transport.IN_PROCESS


def test_table_covers_every_state_and_terminal_states_lead_nowhere() -> None:
    assert set(TRANSITIONS) == set(SessionState)
    assert TRANSITIONS[SessionState.CLOSED] == frozenset()
    assert TRANSITIONS[SessionState.ERROR] == frozenset()
    # error is reachable from every live state and from closing
    for state in (*LIVE_STATES, SessionState.CLOSING):
        assert SessionState.ERROR in TRANSITIONS[state]
    # the happy path
    path = [SessionState.CREATED, SessionState.INITIALIZING, SessionState.READY]
    path += [SessionState.CLOSING, SessionState.CLOSED]
    for old, new in itertools.pairwise(path):
        check_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (SessionState.READY, SessionState.CREATED),
        (SessionState.READY, SessionState.INITIALIZING),
        (SessionState.CLOSED, SessionState.READY),
        (SessionState.CREATED, SessionState.CLOSED),
        (SessionState.ERROR, SessionState.CLOSED),
        (SessionState.READY, SessionState.READY),
    ],
)
def test_invalid_transitions_raise_with_a_readable_message(
    old: SessionState, new: SessionState
) -> None:
    with pytest.raises(InvalidTransition, match=f"from '{old.value}' to '{new.value}'"):
        check_transition(old, new)
    assert issubclass(InvalidTransition, ValueError)
