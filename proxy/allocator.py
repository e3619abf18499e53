"""jemalloc for the processes that train, the one home of its path and settings: the search sets
them for its Ray workers, and `python proxy/allocator.py` prints them for the shell (`make` and
`bench/device_check.sh` run their commands with them).

With glibc's malloc, the large tensors of a training step are mapped and unmapped every step;
jemalloc keeps the freed pages for the next one (docs/proxy.md, "Speed on a CPU"). Run as a
file, not with `-m` (the `proxy` package imports torch): the shell pays nothing to ask.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

#: Where Debian's `libjemalloc2` installs the library, by architecture.
JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2")
#: Freed pages stay with the process for the next step (as fast as the old `oversize_threshold:0`
#: beside it, which made a Ray trial worker grow by 150-300 MB/s on IV/gamma2-se4 at rung 10:
#: docs/results/2026-12-07-ladder.md).
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def jemalloc_path() -> str | None:
    """The installed jemalloc library of this machine, or None."""
    return next((path for path in JEMALLOC_PATHS if Path(path).is_file()), None)


def jemalloc_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process (e.g. a Ray worker's ``runtime_env["env_vars"]``) that
    preloads jemalloc when it is installed; unchanged otherwise.

    Args:
        env: the environment to extend (this process's by default).
    """
    env = dict(os.environ if env is None else env)
    path = jemalloc_path()
    preloaded = re.split(r"[:\s]+", env.get("LD_PRELOAD", ""))  # the loader takes either separator
    if path and path not in preloaded:
        env["LD_PRELOAD"] = ":".join(x for x in (path, *preloaded) if x)
        env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return env


def shell_words() -> str:
    """`NAME=value` words of what `jemalloc_env` adds to this process's environment, for `env` or
    `export`; empty where jemalloc is not installed (or already preloaded)."""
    added = jemalloc_env()
    return " ".join(f"{k}={v}" for k, v in added.items() if os.environ.get(k) != v)


if __name__ == "__main__":
    print(shell_words())


__all__ = ["JEMALLOC_CONF", "JEMALLOC_PATHS", "jemalloc_env", "jemalloc_path", "shell_words"]
