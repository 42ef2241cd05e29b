"""trio-session-supervisor: every session a trio task (an actor) under one supervisor nursery.

The whole public API is re-exported here; everything else is private. The distribution is
called ``trio-session-supervisor`` (the PyPI name ``supervisor`` is the UNIX process manager).
"""

from contextlib import suppress as _suppress

from ._config import SupervisorConfig as SupervisorConfig
from ._durable import ActiveElsewhere as ActiveElsewhere
from ._durable import DurableRecord as DurableRecord
from ._durable import SessionStore as SessionStore
from ._durable import StoreError as StoreError
from ._durable import Superseded as Superseded
from ._events import Event as Event
from ._events import EventKind as EventKind
from ._events import Lagged as Lagged
from ._events import Subscription as Subscription
from ._exceptions import CapacityError as CapacityError
from ._exceptions import InvalidTransition as InvalidTransition
from ._exceptions import MailboxFull as MailboxFull
from ._exceptions import PrincipalMismatch as PrincipalMismatch
from ._exceptions import SessionClosed as SessionClosed
from ._exceptions import SessionNotFound as SessionNotFound
from ._exceptions import SupervisorClosed as SupervisorClosed
from ._exceptions import SupervisorError as SupervisorError
from ._session import Mailbox as Mailbox
from ._session import Message as Message
from ._session import Session as Session
from ._session import SessionSnapshot as SessionSnapshot
from ._state import LIVE_STATES as LIVE_STATES
from ._state import TRANSITIONS as TRANSITIONS
from ._state import SessionState as SessionState
from ._state import Transport as Transport
from ._stats import SessionMetrics as SessionMetrics
from ._stats import SessionStatistics as SessionStatistics
from ._supervisor import Actor as Actor
from ._supervisor import SessionContext as SessionContext
from ._supervisor import Supervisor as Supervisor
from ._supervisor import open_supervisor as open_supervisor

__version__ = "0.1.0"

__all__ = [
    "LIVE_STATES",
    "TRANSITIONS",
    "ActiveElsewhere",
    "Actor",
    "CapacityError",
    "DurableRecord",
    "Event",
    "EventKind",
    "InvalidTransition",
    "Lagged",
    "Mailbox",
    "MailboxFull",
    "Message",
    "PrincipalMismatch",
    "Session",
    "SessionClosed",
    "SessionContext",
    "SessionMetrics",
    "SessionNotFound",
    "SessionSnapshot",
    "SessionState",
    "SessionStatistics",
    "SessionStore",
    "StoreError",
    "Subscription",
    "Superseded",
    "Supervisor",
    "SupervisorClosed",
    "SupervisorConfig",
    "SupervisorError",
    "Transport",
    "open_supervisor",
]

# Present public classes as living in the package root (in reprs, docs and pickles).
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("supervisor._"):
        with _suppress(AttributeError, TypeError):
            _obj.__module__ = __name__
del _name, _obj, _suppress
