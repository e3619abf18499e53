"""A graceful stop on SIGTERM or SIGINT, what schedulers (Slurm, Kubernetes, systemd) and Ctrl+C send.

The first signal asks the search to stop: no new trial starts, the running ones are stopped and
closed as interrupted (queued again for a resume), and the reports of what finished are written
and marked partial; the command then ends with one line that says why and how to go on, and
exit status 128 + the signal (143 for SIGTERM, 130 for SIGINT). A second signal stops at once:
the study stays resumable (a resume closes what was left running). While Ray Tune runs trials,
the request reaches it through Tune's own interrupt (its SIGUSR1 handler), so that it stops its
trials and saves its state before it returns.
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stop:
    """Whether, and by which signal, a stop was asked, for the whole process."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_status(self) -> int:
        """128 + the signal, the shell's convention for a command ended by one."""
        return 128 + (self.signum or 0)

    def ask(self, signum: int) -> None:
        self.signum = signum


STOP = Stop()
#: The console as it was when the handlers were installed: Ray's output is sent elsewhere while
#: trials run (`search.cluster.ray_output`), and what a signal says must reach the user.
_console: list = []
#: How many `handling` blocks are open (in the main thread): `reclaim` acts only inside one.
_handling = [0]


def resume_command() -> str:
    """The command that continues what this process was doing: the same command, `-m module` included
    (`sys.orig_argv` keeps the interpreter's options, which `sys.argv` replaces by the module's path)."""
    args = sys.orig_argv[1:]
    return shlex.join(["python", *args]) if args and sys.argv and sys.argv[0] else "the same command"


def say(line: str) -> None:
    """A line on the console, whatever the standard streams point at now."""
    out = _console[0] if _console else sys.stderr
    print(line, file=out, flush=True)


def _handle(signum: int, frame: FrameType | None) -> None:
    if STOP.requested:  # the second signal: at once, with the processes this one started (a local Ray)
        say(f"stopped at once by a second {signal.Signals(signum).name}: trials left running are closed and queued "
            f"again when the search resumes; resume with: {resume_command()}")
        _end_children()
        os._exit(128 + signum)
    STOP.ask(signum)
    say(f"{STOP.name} received: stopping once what finished is recorded (send it again to stop at once)")
    tune_interrupt = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
    if callable(tune_interrupt) and tune_interrupt is not _handle:
        tune_interrupt(signum, frame)  # Ray Tune's: ends its loop after stopping the trials and saving its state


def end_processes(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM each process (by id), then SIGKILL what is left after `grace_s`."""
    import psutil

    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)


def _end_children() -> None:
    """End every process this one started (a local Ray's), by id."""
    import psutil

    end_processes([child.pid for child in psutil.Process().children(recursive=True)])


def install() -> None:
    """Take SIGTERM and SIGINT in the main thread; Ray Tune is told not to take SIGINT, and is
    reached through SIGUSR1."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    if not _console:
        _console.append(os.fdopen(os.dup(2), "w", buffering=1))  # fd 2 even where sys.stderr is replaced
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _handle)


@contextmanager
def handling() -> Iterator[None]:
    """SIGTERM and SIGINT handled as graceful stops inside (`install`), as before after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {signum: signal.getsignal(signum) for signum in SIGNALS}
    install()
    _handling[0] += 1
    try:
        yield
    finally:
        _handling[0] -= 1
        for signum, handler in before.items():
            signal.signal(signum, handler)
        if not _handling[0] and _console:  # the console of this block, not of whatever fd 2 is later
            _console.pop().close()


def reclaim() -> None:
    """Take the signals back after `ray.init`, which installs handlers of its own, where a
    `handling` block is in force (elsewhere Ray's stay)."""
    if _handling[0] and threading.current_thread() is threading.main_thread():
        install()


def stopped_line(what: str) -> str:
    """The one line a stopped command ends with."""
    return f"stopped by {STOP.name}: {what}; resume with: {resume_command()}"


__all__ = ["STOP", "Stop", "end_processes", "handling", "install", "reclaim", "resume_command",
           "say", "stopped_line"]
