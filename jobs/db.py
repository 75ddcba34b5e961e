"""The SQLAlchemy engine and transactions.

SQLite (the embedded default) runs in WAL mode with ``synchronous=NORMAL``, a busy timeout and
foreign keys on. Write transactions start with ``BEGIN IMMEDIATE`` so that a transaction that
reads and then writes never fails on a lock upgrade; reads use a deferred ``BEGIN``, so polling
readers never wait for one another.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, CursorResult, Delete, Engine, Update, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from .models import Base

if TYPE_CHECKING:
    from .config import Settings

BUSY_TIMEOUT_MS = 10_000
SCHEMA_LOCK_KEY = 0x6966_7363  # "gifs": PostgreSQL advisory lock around schema creation


class Database:
    """One engine per process; ``begin()`` for writes, ``read()`` for read-only work."""

    def __init__(self, url: str, *, network_timeout: float = 30.0) -> None:
        """``network_timeout``: PostgreSQL only — connecting, and unacknowledged or silent TCP
        (a partition, a dead host), fail after this many seconds instead of the kernel's ~15
        minutes, so that a cut-off worker notices it (its heartbeat self-fences)."""
        self.url = url
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        self.engine = _make_engine(url, self.is_sqlite, network_timeout)
        self._reader = self.engine.execution_options(gif_begin="DEFERRED")

    @classmethod
    def for_settings(cls, settings: Settings) -> Database:
        """The job store ``settings`` name (``GIF_DATABASE_URL``, ``GIF_DATABASE_TIMEOUT_SECONDS``)."""
        return cls(settings.db_url, network_timeout=settings.database_timeout_seconds)

    def create_all(self) -> None:
        """Create missing tables, then add the nullable columns that a store created by an
        earlier version lacks (the only migrations so far are such additions).

        On PostgreSQL, API and worker processes starting together would race on ``CREATE TABLE``;
        a transaction-scoped advisory lock makes them take turns.
        """
        with self.engine.begin() as conn:
            if not self.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            Base.metadata.create_all(conn)
            _add_missing_columns(conn)

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """A session in a write transaction, committed on success, rolled back on error."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session in a read transaction (never takes the write lock)."""
        with Session(self._reader, expire_on_commit=False) as session, session.begin():
            yield session

    def ping(self) -> None:
        """Raise if the database does not answer ``SELECT 1``."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def rows_matched(session: Session, statement: Update | Delete) -> int:
    """Run an UPDATE or DELETE; how many rows it matched. (``Session.execute`` is typed to return
    a ``Result``; for these statements it is a ``CursorResult``, the one with ``rowcount``.)"""
    return cast("CursorResult[Any]", session.execute(statement)).rowcount


def _make_engine(url: str, is_sqlite: bool, network_timeout: float) -> Engine:
    if not is_sqlite:
        return create_engine(url, pool_pre_ping=True, connect_args=_libpq_timeouts(network_timeout))
    path = make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _libpq_timeouts(seconds: float) -> dict[str, int]:
    """libpq connection parameters: a connect timeout, TCP keepalives probing an idle connection,
    and ``tcp_user_timeout`` for data sent but never acknowledged."""
    whole = max(2, int(seconds))
    return {
        "connect_timeout": whole,
        "keepalives": 1,
        "keepalives_idle": max(1, whole // 3),
        "keepalives_interval": max(1, whole // 6),
        "keepalives_count": 3,
        "tcp_user_timeout": whole * 1000,
    }


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # let SQLAlchemy emit BEGIN itself (see _sqlite_begin)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn) -> None:
    mode = conn.get_execution_options().get("gif_begin", "IMMEDIATE")
    conn.exec_driver_sql(f"BEGIN {mode}")


def _add_missing_columns(conn: Connection) -> None:
    """``ALTER TABLE … ADD COLUMN`` for every nullable model column a table lacks (with its index)."""
    inspector = inspect(conn)
    for table in Base.metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [column for column in table.columns if column.name not in present]
        for column in missing:
            if not column.nullable:
                raise RuntimeError(
                    f"the job store's table {table.name} lacks the required column {column.name}"
                )
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
        names = {column.name for column in missing}
        for index in table.indexes:
            if names & {column.name for column in index.columns}:
                index.create(conn, checkfirst=True)
