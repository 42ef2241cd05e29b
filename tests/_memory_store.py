"""An in-memory `SessionStore` for the core's durability tests (trio's clock, no threads).

It follows supervisor/_durable.py's contract as the real stores do (the contract suite,
tests/_store_contract.py, checks those); several instances sharing one `Shelf` act as nodes of a
cluster, each alive until `Shelf.kill` says otherwise.
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from supervisor import ActiveElsewhere, DurableRecord, SessionNotFound, Superseded


@attrs.define
class Shelf:
    """What the nodes share: the records, and which nodes are alive."""

    records: dict[str, DurableRecord] = attrs.field(factory=dict)
    alive: set[str] = attrs.field(factory=set)
    saves: int = 0

    def kill(self, node: str) -> None:
        self.alive.discard(node)


class MemoryStore:
    def __init__(self, shelf: Shelf | None = None, *, delay: float = 0.0) -> None:
        self.shelf = shelf if shelf is not None else Shelf()
        self.delay = delay
        self.fail: Exception | None = None  # raised by the next writes while set
        self._node = ""

    @property
    def node(self) -> str:
        return self._node

    @asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        self._node = secrets.token_hex(8)
        self.shelf.alive.add(self._node)
        try:
            yield
        finally:
            self.shelf.alive.discard(self._node)

    async def _step(self) -> None:
        if self.delay:
            await trio.sleep(self.delay)
        else:
            await trio.lowlevel.checkpoint()
        if self.fail is not None:
            raise self.fail
        # A dead node may still write: fencing (epoch and owner), not liveness, refuses it.

    def _check(self, record: DurableRecord) -> None:
        json.dumps(record.state)
        known = self.shelf.records.get(record.id)
        if known is None:
            if record.epoch != 1:
                raise Superseded("gone")
        elif known.epoch != record.epoch or known.owner != record.owner:
            raise Superseded("stale")

    async def save(self, record: DurableRecord) -> None:
        await self._step()
        self._check(record)
        self.shelf.records[record.id] = copy.deepcopy(record)
        self.shelf.saves += 1

    async def passivate(self, record: DurableRecord, expires: float) -> None:
        await self._step()
        self._check(record)
        self.shelf.records[record.id] = attrs.evolve(
            copy.deepcopy(record), owner=None, expires=expires
        )

    async def activate(self, session_id: str, now: float) -> DurableRecord:
        await self._step()
        known = self.shelf.records.get(session_id)
        if known is None:
            raise SessionNotFound(session_id)
        alive = known.owner == self._node or known.owner in self.shelf.alive
        if known.owner is not None and known.owner != self._node and alive:
            raise ActiveElsewhere("active elsewhere", known.owner)
        if not alive and known.expires is not None and known.expires < now:
            del self.shelf.records[session_id]
            raise SessionNotFound(session_id)
        fresh = attrs.evolve(known, epoch=known.epoch + 1, owner=self._node)
        self.shelf.records[session_id] = fresh
        return copy.deepcopy(fresh)

    async def delete(self, session_id: str, epoch: int) -> bool:
        await self._step()
        known = self.shelf.records.get(session_id)
        if known is None or known.epoch != epoch or known.owner not in (None, self._node):
            return False
        del self.shelf.records[session_id]
        return True

    async def purge(self, now: float) -> int:
        await self._step()
        gone = [
            k
            for k, r in self.shelf.records.items()
            if r.owner not in self.shelf.alive and r.expires is not None and r.expires < now
        ]
        for k in gone:
            del self.shelf.records[k]
        return len(gone)


__all__ = ["MemoryStore", "Shelf"]
