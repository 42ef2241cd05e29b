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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from supervisor import SessionNotFound
from supervisor._durable import DurableRecord, SessionStore, StoreError, Superseded
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


@contextlib.contextmanager
def foreign_writer(path: Path) -> Iterator[None]:
    """Another connection holds the file's write lock while the block runs."""
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        yield
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()


def rows(path: Path) -> dict[str, tuple[int, str | None, str]]:
    """Every row's epoch, owner and state, read by a fresh connection."""
    reader = sqlite3.connect(path)
    try:
        found = reader.execute("SELECT id, epoch, owner, state FROM sessions").fetchall()
    finally:
        reader.close()
    return {sid: (epoch, owner, state) for sid, epoch, owner, state in found}


async def test_an_sqlite_failure_is_a_store_error_for_every_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("supervisor.durable._sqlite._BUSY_TIMEOUT", 0.05)
    path = tmp_path / "sessions.db"
    store = SqliteStore(path)
    errors: list[StoreError] = []

    async def save(sid: str) -> None:
        try:
            await store.save(make_record(sqlite_store(store), sid))
        except StoreError as exc:
            errors.append(exc)

    async with store.open():
        with foreign_writer(path), trio.fail_after(30):
            with pytest.raises(StoreError, match="locked"):
                await store.activate(new_id(), time.time())
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(save, new_id())
        assert len(errors) == 5
        assert all("locked" in str(exc) for exc in errors)
        assert rows(path) == {}
        sid = new_id()
        await store.save(make_record(sqlite_store(store), sid))  # and the store carries on
        assert list(rows(path)) == [sid]


async def test_concurrent_saves_get_their_own_verdicts(tmp_path: Path) -> None:
    # Saves waiting together are committed together; each still gets its own answer.
    path = tmp_path / "sessions.db"
    store = SqliteStore(path)
    async with store.open():
        stored = sqlite_store(store)
        fresh = [new_id() for _ in range(40)]
        verdicts: dict[tuple[str, int], str] = {}

        async def save(sid: str, epoch: int) -> None:
            try:
                await store.save(make_record(stored, sid, epoch=epoch, state={"e": epoch}))
            except Superseded:
                verdicts[sid, epoch] = "superseded"
            else:
                verdicts[sid, epoch] = "saved"

        async with trio.open_nursery() as nursery:
            for sid in fresh:
                nursery.start_soon(save, sid, 1)
                nursery.start_soon(save, sid, 2)  # no row at epoch 2: refused
        assert verdicts == {
            **{(sid, 1): "saved" for sid in fresh},
            **{(sid, 2): "superseded" for sid in fresh},
        }
        assert rows(path) == {sid: (1, store.node, '{"e":1}') for sid in fresh}


async def test_a_save_cancelled_while_it_waits_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    store = SqliteStore(path)
    first, second = new_id(), new_id()  # second: cancelled
    async with store.open():
        stored = sqlite_store(store)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                with foreign_writer(path):  # the first commit waits on it (busy timeout 5 s)
                    nursery.start_soon(store.save, make_record(stored, first))
                    await trio.testing.wait_all_tasks_blocked()
                    with trio.CancelScope() as waiting:
                        waiting.cancel()
                        await store.save(make_record(stored, second))
                    assert waiting.cancelled_caught
                # the lock is released: the first save commits, without the second
        assert list(rows(path)) == [first]
        third = new_id()
        await store.save(make_record(stored, third))  # the next commit does not carry it either
        assert sorted(rows(path)) == sorted([first, third])


async def test_a_save_cancelled_while_its_commit_runs(tmp_path: Path) -> None:
    # Three saves in one commit; the last one's caller gives up while the commit runs. The
    # others are confirmed, and the store goes on (the cancelled one's outcome is unknown).
    path = tmp_path / "sessions.db"
    store = SqliteStore(path)
    ids = [new_id() for _ in range(3)]
    saved: list[str] = []
    async with store.open():
        stored = sqlite_store(store)
        scopes = [trio.CancelScope() for _ in ids]

        async def save(sid: str, scope: trio.CancelScope) -> None:
            with scope:
                await store.save(make_record(stored, sid))
                saved.append(sid)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                with foreign_writer(path):
                    for sid, scope in zip(ids, scopes, strict=True):
                        nursery.start_soon(save, sid, scope)
                    await trio.testing.wait_all_tasks_blocked()
                    scopes[-1].cancel()
                    await trio.testing.wait_all_tasks_blocked()
        # The one cancelled may have led the commit (then it was confirmed) or not.
        assert set(ids[:2]) <= set(saved) <= set(ids)
        assert set(saved) <= set(rows(path))
        later = new_id()
        await store.save(make_record(stored, later))
        assert later in rows(path)


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
