"""The one SQLite connection a store file gets, and its write transactions.

One connection per file, shared across threads behind a lock (Gradio runs handlers on worker
threads; sqlite3's check_same_thread is turned off for that reason). Every write runs in
`BEGIN IMMEDIATE` so a read-then-write never fails with SQLITE_BUSY half way, and is committed
before the method returns. WAL journal, synchronous=FULL: an acknowledged write survives a killed
process and a power cut. UserStore (the history) and StudyStore (rating studies) both write
through this, which is why it is its own module: neither needs to import the other.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import sqlite_utils

from .checks import text_problem
from .schema import migrate

BUSY_TIMEOUT_MS = 10_000


def default_db_path() -> Path:
    """$COSTEER_DB, else ./data/costeer.db."""
    return Path(os.environ.get("COSTEER_DB") or Path("data") / "costeer.db")


class StoreError(ValueError):
    """Bad input to the store; the message names what is wrong."""



def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def check_text(value: str, field: str):
    problem = text_problem(value)
    if problem:
        raise StoreError(f"{field} {problem}")



class Database:
    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_db_path()
        try:
            self._open()
        except (sqlite3.Error, OSError) as exc:  # a directory, not a database, /proc, no permission
            reason = getattr(exc, "strerror", None) or str(exc)
            raise StoreError(f"cannot open the database {self.path}: {reason}") from None

    def _open(self):
        if self.path.is_dir():
            raise OSError(f"{self.path} is a directory, not an SQLite file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        self.db = sqlite_utils.Database(conn)
        self.lock = threading.RLock()
        with self.lock:
            self._begin_immediate()
            try:
                migrate(self.db)
                self.db.conn.commit()
            except BaseException:
                self.db.conn.rollback()
                raise

    def close(self):
        with self.lock:
            self.db.conn.close()

    # -- transactions -------------------------------------------------------------
    def _begin_immediate(self):
        for attempt in range(5):  # busy_timeout already waited; retry a few times more
            try:
                self.db.conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 4:
                    raise
                time.sleep(0.05 * 2**attempt)

    @contextmanager
    def write(self):
        """One write transaction: all or nothing, committed when the block ends."""
        with self.lock:
            if self.db.conn.in_transaction:  # nested call from another write: a savepoint
                with self.db.atomic():
                    yield self.db
                return
            try:
                self._begin_immediate()
                try:
                    yield self.db
                    self.db.conn.commit()
                except BaseException:
                    self.db.conn.rollback()
                    raise
            except sqlite3.OperationalError as exc:
                raise StoreError(self._write_failure(exc)) from None

    def _write_failure(self, exc: sqlite3.OperationalError) -> str:
        """A write SQLite refused, in words; the transaction was rolled back, nothing was saved."""
        reason = str(exc)
        if "readonly" in reason or "read-only" in reason:
            reason = "the database file is read-only"
        elif "full" in reason:
            reason = "the disk (or the database's size limit) is full"
        elif "locked" in reason:
            reason = "the database is busy in another program; try again"
        return f"could not save to {self.path.name}: {reason}. Nothing was changed."

    def writable_problem(self) -> str | None:
        """Why writes will fail (checked at start-up so the app can warn), or None."""
        with self.lock:
            try:
                self._begin_immediate()
                self.db.conn.execute("CREATE TABLE IF NOT EXISTS _write_probe (x)")
                self.db.conn.rollback()
            except sqlite3.OperationalError as exc:
                if self.db.conn.in_transaction:
                    self.db.conn.rollback()
                return self._write_failure(exc)
        return None

    def rows(self, table: str, where: str | None = None, args=(), **kw) -> list[dict]:
        """`rows_where` under the store's lock, as a list (the connection is shared by threads)."""
        with self.lock:
            return list(self.db[table].rows_where(where, args, **kw))
