"""Opening the Optuna storage, and storage URLs that hold no secret.

A password in a storage URL would travel into everything that records the URL: the study's
settings attribute, the summary, each export's provenance.json and Ray Tune's pickled searcher
state. libpq reads the password from PGPASSWORD or ~/.pgpass when the URL has none, so the
search moves it there (this process only) and records the URL without it.
"""
from __future__ import annotations

import os
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

#: SQLAlchemy dialects whose driver is libpq (it reads PGPASSWORD and ~/.pgpass by itself).
_LIBPQ_DIALECTS = ("postgresql",)


def without_password(url: str) -> str:
    """`url` without its password; a PostgreSQL password moves to this process's PGPASSWORD.

    Other databases have no such fallback: their URL must come without a password."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # not a URL; opening the storage reports it
    if parsed.password is None:
        return url
    if parsed.get_backend_name() not in _LIBPQ_DIALECTS:
        raise ValueError(f"storage URL {parsed.render_as_string(hide_password=True)!r} holds a password that "
                         f"would be written to disk; accepted: a URL without one (a PostgreSQL URL's password "
                         f"is taken from PGPASSWORD or ~/.pgpass)")
    os.environ["PGPASSWORD"] = str(parsed.password)
    bare = URL.create(parsed.drivername, parsed.username, None, parsed.host, parsed.port, parsed.database,
                      parsed.query)
    return bare.render_as_string(hide_password=False)


def has_password(url: str | None) -> bool:
    """Whether `url` spells out a password (SearchSettings refuses to record one)."""
    try:
        return url is not None and make_url(url).password is not None
    except ArgumentError:
        return False


def open_storage(url: str) -> optuna.storages.RDBStorage:
    try:
        storage = optuna.storages.RDBStorage(url)
    except ImportError:
        raise ValueError(f"storage {url!r} cannot be opened: its database driver is not installed; accepted: "
                         f"SQLite, or PostgreSQL with pip install -e '.[postgres]' (psycopg 3)") from None
    except Exception as err:  # SQLAlchemy's many error types: report the URL, not a trace
        raise ValueError(f"storage {url!r} cannot be opened: {str(err).splitlines()[0]}; accepted: an "
                         f"SQLAlchemy database URL such as sqlite:///path/study.db") from None
    if storage.engine.dialect.name == "sqlite":
        _commit_without_fsync_each(storage.engine)
    return storage


def _commit_without_fsync_each(engine: sqlalchemy.engine.Engine) -> None:
    """SQLite in write-ahead-log mode with synchronous=NORMAL: a commit no longer waits for an
    fsync, which made the study's writes (one commit per sampled parameter) cost half of each
    one-shot candidate. A killed process loses nothing committed; a power cut may lose the last
    commits, never the database. WAL needs a local disk (NFS: use PostgreSQL)."""

    def on_connect(connection: Any, _: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(engine, "connect", on_connect)
    engine.dispose()  # the connections opened before the listener
