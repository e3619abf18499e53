"""What every command of the project shares (run_search, the audit, the export, the trainer): bad
input ends in one line and exit status 2, and progress lines carry the time of day."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NoReturn, Sequence, TextIO

USAGE_ERROR = 2
"""argparse's exit status for bad usage; the project's commands use it for any bad input."""


@contextmanager
def usage_errors() -> Iterator[None]:
    """Inside, a ValueError or a missing file is bad input: `error: <message>` on stderr and
    exit 2, never a traceback (the project's errors name the bad value and what is accepted).
    Wrap only the checking of input, so that a failure later still shows where it happened."""
    try:
        yield
    except (ValueError, FileNotFoundError) as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        sys.exit(USAGE_ERROR)


def fail(name: str, value: object, accepted: str) -> NoReturn:
    """Raise the project's ValueError for bad input: the value by name, and what is accepted."""
    raise ValueError(f"{name}={value!r} is invalid; accepted: {accepted}")


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> NoReturn:
    """Run a command whose every ValueError is about its input, and exit with its status."""
    with usage_errors():
        status = main(argv)
    sys.exit(status or 0)


class OneLineErrors(argparse.ArgumentParser):
    """Usage errors in one line and exit status 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"error: {message} (see --help)\n")


def log(message: str, out: TextIO | None = None) -> None:
    """One progress line, `[HH:MM:SS] message`, on `out` (standard output by default), flushed."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=out or sys.stdout, flush=True)


def option(help: str, group: str, **more: Any) -> dict[str, Any]:
    """The metadata of a dataclass field a user sets (`help`, the `group` of --help it is listed
    in, and any of `flag`, `parse`, `metavar`, ...): `search.options` turns it into an option."""
    return {"help": help, "group": group, **more}


def option_flag(field: dataclasses.Field) -> str:
    """The command-line flag of a dataclass field that is an option (its metadata holds `help`):
    `flag` from the metadata, else `--field-name` (`search.options` builds the parsers)."""
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))
