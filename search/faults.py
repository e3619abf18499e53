"""How a fault outside the input ends a command: in one line with its own exit status, never a
traceback, and the same command resumes once the cause is gone (docs/faults.md).

Each kind of fault is a `Fault` raised where it is found (`search.storage.StorageFault`,
`search.cluster.ClusterFault`); a full disk is recognised from whatever error it caused.
"""
from __future__ import annotations

import errno
import shutil
import sqlite3
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

#: The exit status of a storage fault, a full disk included (sysexits' EX_IOERR): the study is
#: intact and resumable.
STORAGE_FAULT = 74


class Fault(RuntimeError):
    """A fault outside the input that the user must act on: its message is the one line to
    print, `exit_status` (sysexits') the status the command ends with."""

    exit_status = 1


def causes(err: BaseException | None) -> list[BaseException]:
    """`err` and every exception it was raised from or during."""
    chain: list[BaseException] = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def disk_full(err: BaseException) -> bool:
    """Whether `err` comes from a full disk (SQLite's or any file's)."""
    return any(_sqlite_full(e) or (isinstance(e, OSError) and e.errno == errno.ENOSPC) for e in causes(err))


def _sqlite_full(err: BaseException) -> bool:
    return isinstance(err, sqlite3.OperationalError) and "disk is full" in str(err)


def full_disk_message(folder: Path | None) -> str:
    """One line for a full disk: which folder, how much is free, how to go on."""
    where = folder or Path.cwd()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    return (f"the disk holding {where} is full ({free / 2**20:.1f} MiB free): the study keeps every trial stored "
            f"before; free some space and run the same command to resume")


@contextmanager
def faults(folder: Path) -> Iterator[None]:
    """Inside, a `Fault` or a full disk under `folder` ends the command with one line and the
    fault's exit status, never a traceback."""
    try:
        yield
    except Fault as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(err.exit_status)
    except Exception as err:
        if not disk_full(err):
            raise
        print(f"error: {full_disk_message(folder)}", file=sys.stderr, flush=True)
        sys.exit(STORAGE_FAULT)


__all__ = ["STORAGE_FAULT", "Fault", "causes", "disk_full", "faults", "full_disk_message"]
