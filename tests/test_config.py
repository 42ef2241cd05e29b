from __future__ import annotations

import math
from typing import Any

import attrs
import pytest

from supervisor import SupervisorConfig, open_supervisor


def test_defaults_are_the_seeds_where_it_had_them() -> None:
    config = SupervisorConfig()
    assert config.max_sessions == 100
    assert config.idle_timeout == 1800.0  # the seed's 30 minutes
    assert config.init_timeout is None
    assert config.max_lifetime is None
    assert config.mailbox_size == 64
    assert config.shutdown_grace == 5.0
    assert config.max_sessions_per_principal is None
    assert 0 < config.deadline_slack <= 0.1


def test_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        SupervisorConfig().max_sessions = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_sessions", 0),
        ("max_sessions", 1.5),
        ("max_sessions", True),
        ("idle_timeout", 0),
        ("idle_timeout", -1),
        ("idle_timeout", math.nan),
        ("idle_timeout", "60"),
        ("init_timeout", 0),
        ("max_lifetime", -5),
        ("mailbox_size", -1),
        ("shutdown_grace", -0.1),
        ("shutdown_grace", math.inf),
        ("close_grace", None),
        ("max_sessions_per_principal", 0),
        ("deadline_slack", -0.001),
        ("deadline_slack", 5.0),
    ],
)
def test_bad_values_are_rejected_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        SupervisorConfig(**{field: value})


async def test_open_supervisor_takes_config_keywords_and_rejects_unknown_ones() -> None:
    async with open_supervisor(max_sessions=7, idle_timeout=None) as sup:
        assert sup.config == SupervisorConfig(max_sessions=7, idle_timeout=None)
    with pytest.raises(TypeError):
        async with open_supervisor(max_session=7):
            pass  # pragma: no cover
