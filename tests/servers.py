"""Throw-away servers for the scale-out tests, started and stopped by process id: a PostgreSQL
server (Debian's binaries, run as the `postgres` user in a temporary folder) and a multi-node
Ray cluster on loopback addresses (each node its own IP, temp folder and ports; token auth).

Never `ray stop` or end processes by name: other Ray instances may share the machine.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from search.stop import end_processes

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- PostgreSQL ------------------------------------------------------------------------------------

def postgres_bin() -> Path | None:
    """Debian's newest PostgreSQL server binaries (`scripts/ensure_postgres.sh` installs them)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


@dataclass
class Postgres:
    """A PostgreSQL server on 127.0.0.1 with a database `nas` owned by role `nas` (password auth)."""

    folder: Path
    port: int
    password: str = field(default_factory=lambda: "pw" + secrets.token_hex(12))
    pid: int = 0

    def url(self, with_password: bool = False) -> str:
        secret = f":{self.password}" if with_password else ""
        return f"postgresql://nas{secret}@127.0.0.1:{self.port}/nas"

    bin_dir: Path = Path()

    @staticmethod
    def _as_postgres(*cmd: object) -> subprocess.CompletedProcess:
        as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
        return subprocess.run(as_pg + [str(c) for c in cmd], check=True, capture_output=True, text=True)

    @classmethod
    def start(cls, bin_dir: Path) -> Postgres:
        folder = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
        server = cls(folder, free_port(), bin_dir=bin_dir)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres")
        cls._as_postgres(bin_dir / "initdb", "-D", folder / "data", "-U", "postgres", "--auth-local=trust",
                         "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        server._launch()
        sql = f"CREATE ROLE nas LOGIN PASSWORD '{server.password}'; CREATE DATABASE nas OWNER nas;"
        for statement in sql.split("; "):
            cls._as_postgres(bin_dir / "psql", "-h", folder, "-p", server.port, "-U", "postgres", "-v",
                             "ON_ERROR_STOP=1", "-c", statement)
        return server

    def _launch(self) -> None:
        data = self.folder / "data"
        self._as_postgres(self.bin_dir / "pg_ctl", "-D", data, "-l", self.folder / "server.log", "-w", "-t", "60",
                          "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off "
                                f"-c max_connections=200", "start")
        self.pid = int((data / "postmaster.pid").read_text().split()[0])

    def _shut_down(self) -> None:
        """Fast shutdown: SIGINT to the postmaster, by its id (its connections are cut)."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGINT)
                psutil.wait_procs([psutil.Process(self.pid)], timeout=30)
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
            end_processes([self.pid], grace_s=10.0)

    def restart(self, down_s: float) -> None:
        """Shut the server down, leave it down for `down_s` seconds, start it again (same data)."""
        import time

        self._shut_down()
        time.sleep(down_s)
        self._launch()

    def stop(self) -> None:
        """Shut the server down and remove its folder."""
        self._shut_down()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A throw-away PostgreSQL server, stopped by its process id on the way out; the test is skipped
    where PostgreSQL is not installed."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (make test installs it: scripts/ensure_postgres.sh)")
    server = Postgres.start(bin_dir)
    try:
        yield server
    finally:
        server.stop()
    assert not psutil.pid_exists(server.pid)


# --- Ray -------------------------------------------------------------------------------------------

@dataclass
class RayNode:
    ip: str
    temp_dir: Path
    pids: list[int] = field(default_factory=list)  # the node's daemons (raylet, agents; GCS on the head)

    def runs_a_trial(self) -> bool:
        """Whether a Ray Tune trial actor runs on this node now."""
        for child in psutil.Process(self.raylet_pid()).children(recursive=True):
            try:
                if "ImplicitFunc" in " ".join(child.cmdline()):
                    return True
            except psutil.Error:  # ended meanwhile
                pass
        return False

    def raylet_pid(self) -> int:
        for pid in self.pids:
            try:
                if psutil.Process(pid).name() == "raylet":
                    return pid
            except psutil.NoSuchProcess:
                pass
        raise LookupError(f"node {self.ip} has no raylet")


@dataclass
class RayCluster:
    """A head at 127.0.0.2 with no CPU for trials and worker nodes at 127.0.0.3, .4, ..."""

    root: Path
    address: str = ""
    nodes: list[RayNode] = field(default_factory=list)

    @staticmethod
    def env() -> dict[str, str]:
        return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}

    @classmethod
    def start(cls, workers: list[dict[str, float]]) -> RayCluster:
        """`workers`: per worker node, its {"cpus": n, "gpus": g} (fake GPUs on a GPU-less machine)."""
        cluster = cls(Path(tempfile.mkdtemp(prefix="r", dir="/tmp")))  # short: socket paths <= 107 bytes
        try:
            port = free_port()
            cluster.address = f"127.0.0.2:{port}"
            cluster._start_node("127.0.0.2", ["--head", f"--port={port}", "--num-cpus=0", "--num-gpus=0",
                                              "--include-dashboard=false"])
            for i, resources in enumerate(workers):
                cluster._start_node(f"127.0.0.{3 + i}", [f"--address={cluster.address}",
                                                         f"--num-cpus={resources.get('cpus', 1):g}",
                                                         f"--num-gpus={resources.get('gpus', 0):g}"])
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start_node(self, ip: str, args: list[str]) -> RayNode:
        temp = self.root / ip.rsplit(".", 1)[1]
        temp.mkdir()
        before = set(psutil.pids())
        subprocess.run([RAY, "start", f"--node-ip-address={ip}", f"--temp-dir={temp}", "--disable-usage-stats",
                        "--object-store-memory=100000000", f"--dashboard-agent-listen-port={free_port()}",
                        f"--metrics-export-port={free_port()}", *args],
                       check=True, capture_output=True, text=True, env=self.env(), timeout=180)
        node = RayNode(ip, temp, [p.pid for p in psutil.process_iter(["cmdline"])
                                  if p.pid not in before and str(temp) in " ".join(p.info["cmdline"] or [])])
        self.nodes.append(node)
        return node

    def node(self, ip: str) -> RayNode:
        return next(n for n in self.nodes if n.ip == ip)

    def kill_raylet(self, ip: str) -> None:
        """SIGKILL a node's raylet, as when its machine dies; its workers are remembered for `stop`."""
        node = self.node(ip)
        raylet = psutil.Process(node.raylet_pid())
        node.pids += [c.pid for c in raylet.children(recursive=True)]
        raylet.kill()

    def stop(self) -> None:
        """End every process of the cluster by id: the daemons and all their children (workers)."""
        pids: set[int] = set()
        for node in self.nodes:
            for pid in node.pids:
                try:
                    pids.update([pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)])
                except psutil.NoSuchProcess:
                    pass
        # Workers whose raylet was killed are orphans: they still name this cluster's folders.
        for proc in psutil.process_iter(["cmdline"]):
            if str(self.root) in " ".join(proc.info["cmdline"] or []):
                pids.add(proc.pid)
        end_processes(sorted(pids), grace_s=10.0)
        shutil.rmtree(self.root, ignore_errors=True)
