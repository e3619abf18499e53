"""Opening the Optuna storage, riding out a database that goes away for a while, and storage URLs
that hold no secret.

A PostgreSQL server that restarts, or a network blip, closes the storage's connections: every
storage call is retried with back-off for `retry_s` (`--storage-retry`, a minute by default)
before it fails as a `StorageFault`, one line that names the URL without its password. A full
disk is no blip: it fails at once, naming the folder and its free space. Either way the study
holds every trial stored before, and the same command resumes.

A password in a storage URL would travel into everything that records the URL: the study's
settings attribute, the summary, each export's provenance.json and Ray Tune's pickled searcher
state. libpq reads the password from PGPASSWORD or ~/.pgpass when the URL has none, so the
search moves it there (this process only) and records the URL without it.
"""
from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable

import optuna
import sqlalchemy
import sqlalchemy.event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .faults import STORAGE_FAULT, Fault, causes, disk_full, full_disk_message
from .optuna_adapter import PRIVATE_STORAGE_CALLS
from .stop import say

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


class StorageFault(Fault):
    """The storage failed in a way the user must act on; the message is the one line to print."""

    exit_status = STORAGE_FAULT


def _transient(err: BaseException) -> bool:
    """A lost or refused database connection, or a locked SQLite file: worth waiting for."""
    if isinstance(err, StorageFault) or disk_full(err):
        return False
    chain = causes(err)
    if any(isinstance(e, (sqlalchemy.exc.DisconnectionError, sqlalchemy.exc.InterfaceError)) for e in chain):
        return True
    return any(isinstance(e, sqlalchemy.exc.OperationalError) and not isinstance(e.orig, sqlite3.OperationalError)
               or (isinstance(e, sqlite3.OperationalError) and "locked" in str(e)) for e in chain)


def shown_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


#: Set while a storage call of this thread is being retried: the calls it makes itself (Optuna's
#: `create_new_trial` calls `_create_new_trial`) run once each, so one window covers them all.
_retrying = threading.local()


class RetryingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose every call is retried with back-off for `retry_s` seconds when
    the database connection is lost or refused, then fails as a `StorageFault`. It stays an
    `RDBStorage`, so Optuna still caches its finished trials in front of it."""

    def __init__(self, url: str, retry_s: float = 60.0, **kwargs: Any) -> None:
        self.retry_s = retry_s
        super().__init__(url, **kwargs)

    def _retry(self, call: Callable[[], Any]) -> Any:
        if getattr(_retrying, "active", False):
            return call()
        _retrying.active = True
        try:
            return self._retry_outermost(call)
        finally:
            _retrying.active = False

    def _retry_outermost(self, call: Callable[[], Any]) -> Any:
        started, delay = time.monotonic(), 0.5
        failed = False
        while True:
            try:
                result = call()
            except Exception as err:
                if not _transient(err):
                    raise
                reason = _first_line(err)
                waited = time.monotonic() - started  # the failing calls' own time counts too
                if not failed:
                    say(f"the study's database at {shown_url(self.url)} stopped answering ({reason}); retrying for "
                        f"up to {self.retry_s:g} s")
                    failed = True
                if waited >= self.retry_s:
                    raise StorageFault(
                        f"the study's database at {shown_url(self.url)} has not answered for {waited:.0f} s "
                        f"({reason}); every trial stored before is kept: when it is back, run the same command "
                        f"to resume (or allow longer with --storage-retry)") from None
                time.sleep(min(delay, max(self.retry_s - waited, 0.0)))
                delay = min(2 * delay, 10.0)
                continue
            if failed:
                say(f"the study's database is back after {time.monotonic() - started:.0f} s; the search goes on")
            return result


def _first_line(err: BaseException) -> str:
    """The innermost cause's message, first line (the driver's own words)."""
    for e in reversed(causes(err)):
        text = str(e).strip()
        if text:
            return text.splitlines()[0]
    return type(err).__name__


def _retried(name: str) -> Callable[..., Any]:
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retry(lambda: method(self, *args, **kwargs))
    return call


for _name in (*optuna.storages.BaseStorage.__abstractmethods__, "get_trial_id_from_study_id_trial_number",
              "get_trial_param", "get_trial_user_attrs", "get_trial_system_attrs", "get_best_trial", "get_n_trials",
              "get_trial_number_from_id", "get_trial_params", "check_trial_is_updatable", "record_heartbeat",
              *PRIVATE_STORAGE_CALLS):
    setattr(RetryingRDBStorage, _name, _retried(_name))


def open_storage(url: str, retry_s: float = 60.0) -> RetryingRDBStorage:
    """The storage at `url`; a URL that cannot be opened is a ValueError in one line. PostgreSQL
    connections are checked before use, so that a restarted server costs no failed call."""
    kwargs = {"engine_kwargs": {"pool_pre_ping": True}} if url.startswith("postgresql") else {}
    try:
        storage = RetryingRDBStorage(url, retry_s, **kwargs)
    except ImportError:
        raise ValueError(f"storage {url!r} cannot be opened: its database driver is not installed; accepted: "
                         f"SQLite, or PostgreSQL with pip install -e '.[postgres]' (psycopg 3)") from None
    except Exception as err:  # SQLAlchemy's many error types: report the URL, not a trace
        if disk_full(err):
            raise StorageFault(full_disk_message(_sqlite_folder(url))) from None
        raise ValueError(f"storage {url!r} cannot be opened: {str(err).splitlines()[0]}; accepted: an "
                         f"SQLAlchemy database URL such as sqlite:///path/study.db") from None
    if storage.engine.dialect.name == "sqlite":
        _commit_without_fsync_each(storage.engine)
    return storage


def _sqlite_folder(url: str) -> Path | None:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    return Path(parsed.database).resolve().parent if parsed.get_backend_name() == "sqlite" and parsed.database \
        else None


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
