"""SqliteStore: the store contract, plus what only the embedded store promises.

One process per file (the lock), a missing directory named in the error, saves confirmed on disk
when they return (a fresh connection sees them) and records that survive the writer's SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from supervisor import SessionNotFound
from supervisor._durable import DurableRecord, SessionStore, StoreError
from supervisor.durable import SqliteStore

from ._store_contract import StoreContract, StoreFactory, make_record, new_id

ROOT = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT = 30.0  # seconds for the child process to start, save and say so


class TestSqliteStoreContract(StoreContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        path = tmp_path / "sessions.db"

        @contextlib.asynccontextmanager
        async def node() -> AsyncIterator[SessionStore]:
            store = SqliteStore(path)
            async with store.open():
                yield sqlite_store(store)

        return node


def sqlite_store(store: SqliteStore) -> SessionStore:
    """``store`` as the protocol it implements (checked by mypy here)."""
    return store


async def test_a_second_open_of_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    async with SqliteStore(path).open():
        with pytest.raises(StoreError, match=rf"in use by another process \(pid {os.getpid()}\)"):
            async with SqliteStore(path).open():
                pass  # pragma: no cover


async def test_an_open_store_cannot_be_opened_again(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "sessions.db")
    async with store.open():
        with pytest.raises(StoreError, match="open already"):
            async with store.open():
                pass  # pragma: no cover


async def test_reopen_after_close(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    store = SqliteStore(path)
    sid = new_id()
    async with store.open():
        first_node = store.node
        await store.save(make_record(sqlite_store(store), sid))
    async with store.open():  # the same object again
        assert store.node != first_node
        assert (await store.activate(sid, time.time())).epoch == 2
    async with SqliteStore(path).open():  # and another object on the same file
        pass


async def test_a_missing_directory_is_a_store_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(StoreError, match=str(missing)):
        async with SqliteStore(missing / "sessions.db").open():
            pass  # pragma: no cover
    assert not missing.exists()  # not created


async def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    path.write_bytes(b"this is not an SQLite database, not even a little" * 100)
    with pytest.raises(StoreError, match=r"sessions\.db"):
        async with SqliteStore(path).open():
            pass  # pragma: no cover
    async with SqliteStore(tmp_path / "other.db").open():  # the lock was released
        pass
    with contextlib.suppress(StoreError):
        async with SqliteStore(path).open():
            pass  # pragma: no cover
    assert fcntl_free(path)


def fcntl_free(path: Path) -> bool:
    """No one holds ``path``'s store lock (the failed opens released it)."""
    import fcntl

    fd = os.open(f"{path}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


async def test_methods_of_a_store_that_is_not_open_raise(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "sessions.db")
    record = DurableRecord(id=new_id(), actor="counter", epoch=1, owner="x")
    for _ in range(2):  # never opened, then opened and closed
        with pytest.raises(StoreError, match="store is not open"):
            _ = store.node
        with pytest.raises(StoreError, match="store is not open"):
            await store.save(record)
        with pytest.raises(StoreError, match="store is not open"):
            await store.passivate(record, time.time())
        with pytest.raises(StoreError, match="store is not open"):
            await store.activate(record.id, time.time())
        with pytest.raises(StoreError, match="store is not open"):
            await store.delete(record.id, 1)
        with pytest.raises(StoreError, match="store is not open"):
            await store.purge(time.time())
        async with store.open():
            pass


def test_synchronous_must_be_a_sqlite_level(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "a.db", synchronous="normal")
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore(tmp_path / "a.db", synchronous="SOMETIMES")


async def test_a_save_is_on_disk_when_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    store = SqliteStore(path)
    sid = new_id()
    async with store.open():
        for count in range(1, 6):
            await store.save(make_record(sqlite_store(store), sid, state={"count": count}))
            reader = sqlite3.connect(path)
            try:
                row = reader.execute(
                    "SELECT epoch, owner, state FROM sessions WHERE id = ?", (sid,)
                ).fetchone()
            finally:
                reader.close()
            assert row == (1, store.node, f'{{"count":{count}}}')


async def test_an_sqlite_failure_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    store = SqliteStore(path)
    async with store.open():
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("PRAGMA busy_timeout = 0")
            blocker.execute("BEGIN EXCLUSIVE")  # a foreign writer holds the file
            with trio.fail_after(30), pytest.raises(StoreError, match="locked"):
                await store.save(make_record(sqlite_store(store), new_id()))
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        await store.save(make_record(sqlite_store(store), new_id()))  # and the store carries on


CHILD = textwrap.dedent(
    """
    import sys
    import trio
    from supervisor._durable import DurableRecord
    from supervisor.durable import SqliteStore

    async def main(path, sid):
        store = SqliteStore(path)
        async with store.open():
            await store.save(DurableRecord(
                id=sid, actor="counter", epoch=1, owner=store.node, state={"count": 3},
                handshake={"protocol_version": "2025-06-18"}, created=12.5,
            ))
            print("saved", store.node, flush=True)
            await trio.sleep_forever()

    trio.run(main, sys.argv[1], sys.argv[2])
    """
)


async def read_line(stream: trio.abc.ReceiveStream) -> str:
    """One line from ``stream`` (up to its end if no newline comes)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some()
        if not chunk:
            break
        data += chunk
    return data.decode()


async def test_a_save_survives_the_writers_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    sid = new_id()
    child = await trio.lowlevel.open_process(
        [sys.executable, "-c", CHILD, str(path), sid],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None
        line = ""
        with trio.move_on_after(CHILD_TIMEOUT):
            line = await read_line(child.stdout)
        assert line.startswith("saved "), (
            f"the child did not save within {CHILD_TIMEOUT} s: {line!r} (exit code {child.poll()})"
        )
        child_node = line.split()[1]
        with pytest.raises(StoreError, match=rf"in use by another process \(pid {child.pid}\)"):
            async with SqliteStore(path).open():
                pass  # pragma: no cover
        os.kill(child.pid, signal.SIGKILL)
        with trio.fail_after(CHILD_TIMEOUT):
            assert await child.wait() == -signal.SIGKILL
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            with trio.move_on_after(CHILD_TIMEOUT):
                await child.wait()
        if child.stdout is not None:
            await child.stdout.aclose()
    store = SqliteStore(path)
    async with store.open():
        got = await store.activate(sid, time.time())
        assert got.epoch == 2
        assert got.owner == store.node != child_node
        assert got.state == {"count": 3}
        assert got.handshake == {"protocol_version": "2025-06-18"}
        assert got.created == 12.5
        with pytest.raises(SessionNotFound):
            await store.activate(new_id(), time.time())
