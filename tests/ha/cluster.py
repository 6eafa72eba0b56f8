"""One etcd and three Patroni nodes (PostgreSQL 15) on free local ports, torn down without a trace.

Everything runs as the `postgres` OS user (PostgreSQL refuses root) in process groups of their
own, so teardown can kill exactly what this harness started: the process groups it created, and
the postmasters named by `postmaster.pid` in its own data directories.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.pg_cluster import alive, running_postmaster
from tests.ports import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"

T = TypeVar("T")


class HarnessError(RuntimeError):
    """The drill could not be set up or driven (as opposed to a check that failed)."""


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, step: float = 0.2) -> T:
    """Poll `probe` until it returns something other than None; HarnessError after `timeout`.

    Every wait in the harness goes through here, so none can hang and each failure names what
    it was waiting for.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = probe()
        except Exception as exc:
            last_error, result = exc, None
        if result is not None:
            return result
        if time.monotonic() > deadline:
            hint = f" (last error: {last_error})" if last_error else ""
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}{hint}")
        time.sleep(step)


def http_json(url: str, timeout: float = 2.0) -> Any:
    """GET a JSON document; Patroni answers some endpoints with 503 and a useful body."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - local http
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"null")


def _as_os_user() -> list[str]:
    """The command prefix that drops root to the postgres user (setpriv execs, no extra fork)."""
    return ["setpriv", f"--reuid={OS_USER}", f"--regid={OS_USER}", "--init-groups", "--"]


@dataclass
class Node:
    """One Patroni member: its ports, directories and process."""

    name: str
    pg_port: int
    rest_port: int
    directory: Path
    config: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        """PostgreSQL's data directory (Patroni runs initdb or pg_basebackup into it)."""
        return self.directory / "data"

    @property
    def rest(self) -> str:
        """Base URL of the Patroni REST API."""
        return f"http://127.0.0.1:{self.rest_port}"

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid from `postmaster.pid`, or None when there is none."""
        return running_postmaster(self.data_dir)


@dataclass
class Member:
    """One row of Patroni's `/cluster`: what the drill needs to know about a member."""

    name: str
    role: str
    state: str
    timeline: int | None
    lag: Any


@dataclass
class Cluster:
    """etcd and three Patroni nodes under one temporary directory; every log kept in `logs`."""

    logs: Path
    size: int = 3
    ttl: int = 10
    loop_wait: int = 1
    retry_timeout: int = 4
    base: Path = field(init=False)
    scope: str = field(init=False)
    nodes: list[Node] = field(default_factory=list, init=False)
    etcd_port: int = field(init=False)
    etcd: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log_files: list[Any] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="taskservice-ha-"))
        self.scope = f"ha{os.getpid()}"
        user = pwd.getpwnam(OS_USER)
        os.chown(self.base, user.pw_uid, user.pw_gid)
        self.base.chmod(0o700)
        self.etcd_port = free_port()
        for index in range(1, self.size + 1):
            directory = self.base / f"node{index}"
            directory.mkdir(mode=0o700)
            os.chown(directory, user.pw_uid, user.pw_gid)
            node = Node(
                f"node{index}", free_port(), free_port(), directory, directory / "patroni.yml"
            )
            self.nodes.append(node)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Start etcd, then the nodes; return when a leader and every replica stream."""
        self._start_etcd()
        for node in self.nodes:
            self._write_config(node)
        # The first node bootstraps alone, so initdb and pg_basebackup do not race on 2 cores.
        self._start_node(self.nodes[0])
        wait_for("a leader", lambda: self.leader(), timeout)
        for node in self.nodes[1:]:
            self._start_node(node)
        self.wait_healthy(timeout)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        self._log_files.append(log)
        return subprocess.Popen(  # noqa: S603 - fixed argv built here
            [*_as_os_user(), *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.base,
            start_new_session=True,  # its own process group: teardown kills exactly it
            env={**os.environ, "HOME": str(self.base), "PGPASSFILE": str(self.base / "pgpass")},
        )

    def _start_etcd(self) -> None:
        peer = free_port()
        data = self.base / "etcd"
        self.etcd = self._spawn(
            "etcd",
            [
                "etcd",
                "--name=ha",
                f"--data-dir={data}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=ha=http://127.0.0.1:{peer}",
                "--initial-cluster-state=new",
                "--enable-v2=false",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool | None:
            if self.etcd is not None and self.etcd.poll() is not None:
                raise HarnessError(f"etcd exited {self.etcd.returncode} (see etcd.log)")
            body = http_json(f"http://127.0.0.1:{self.etcd_port}/health")
            return True if body and body.get("health") == "true" else None

        wait_for("etcd", healthy, 30)

    def _write_config(self, node: Node) -> None:
        hba = [
            "local all all trust",
            "host all all 127.0.0.1/32 trust",
            "host replication all 127.0.0.1/32 trust",
        ]
        config = {
            "scope": self.scope,
            "namespace": "/taskservice-ha/",
            "name": node.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"127.0.0.1:{node.rest_port}",
                "connect_address": f"127.0.0.1:{node.rest_port}",
            },
            "etcd3": {"hosts": [f"127.0.0.1:{self.etcd_port}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": self.ttl,
                    "loop_wait": self.loop_wait,
                    "retry_timeout": self.retry_timeout,
                    "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": True,
                    # Fail over at once when the primary crashes, rather than restart it in place.
                    "primary_start_timeout": 0,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "remove_data_directory_on_rewind_failure": True,
                        "remove_data_directory_on_diverged_timelines": True,
                        "parameters": {
                            "max_connections": 100,
                            "wal_keep_size": "128MB",
                            "hot_standby": "on",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}],
                "pg_hba": hba,
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.pg_port}",
                "connect_address": f"127.0.0.1:{node.pg_port}",
                "data_dir": str(node.data_dir),
                "bin_dir": str(PG_BIN),
                "pgpass": str(node.directory / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "postgres"},
                    "rewind": {"username": "postgres"},
                },
                "parameters": {
                    "unix_socket_directories": str(node.directory),
                    "shared_buffers": "32MB",
                    "fsync": "on",
                },
                "pg_hba": hba,
            },
            "tags": {"nofailover": False, "noloadbalance": False},
        }
        # JSON is YAML: no YAML library needed.
        node.config.write_text(json.dumps(config, indent=2))
        user = pwd.getpwnam(OS_USER)
        os.chown(node.config, user.pw_uid, user.pw_gid)

    def _start_node(self, node: Node) -> None:
        node.process = self._spawn(node.name, ["patroni", str(node.config)])

    def stop(self) -> None:
        """Kill everything this cluster started, then delete its directory. Safe to call twice."""
        for node in self.nodes:
            if node.process is not None:
                _kill_group(node.process)
        if self.etcd is not None:
            _kill_group(self.etcd)
        # Patroni starts postmasters in sessions of their own: kill them by their pid files.
        for node in self.nodes:
            pid = node.postmaster_pid()
            if pid is not None:
                _kill_pid(pid)
        # Anything else still running out of our directory (a backend, pg_rewind, initdb).
        for pid in _pids_using(self.base):
            _kill_pid(pid)
        for log in self._log_files:
            log.close()
        self._log_files.clear()
        shutil.rmtree(self.base, ignore_errors=True)

    # -- state ------------------------------------------------------------------------------

    def members(self) -> list[Member]:
        """Patroni's view of the cluster, asked of any node that answers."""
        for node in self.nodes:
            try:
                body = http_json(f"{node.rest}/cluster")
            except (OSError, ValueError):
                continue
            if body and "members" in body:
                return [
                    Member(m["name"], m["role"], m["state"], m.get("timeline"), m.get("lag"))
                    for m in body["members"]
                ]
        return []

    def node(self, name: str) -> Node:
        """The node called `name`."""
        return next(node for node in self.nodes if node.name == name)

    def leader(self) -> Node | None:
        """The node that holds the leader key and runs a writable primary, if any."""
        for member in self.members():
            if member.role in ("leader", "master", "primary") and member.state == "running":
                node = self.node(member.name)
                body = http_json(f"{node.rest}/patroni")
                if body and body.get("role") in ("master", "primary"):
                    return node
        return None

    def healthy(self) -> Node | None:
        """The leader when every member is up and every replica streams from it, else None."""
        leader = self.leader()
        if leader is None:
            return None
        members = self.members()
        if len(members) != self.size:
            return None
        leader_timeline = next(m.timeline for m in members if m.name == leader.name)
        for member in members:
            if member.name == leader.name:
                continue
            if member.state not in ("running", "streaming") or member.timeline != leader_timeline:
                return None
        replication = http_json(f"{leader.rest}/patroni").get("replication") or []
        streaming = [r for r in replication if r.get("state") == "streaming"]
        if len(streaming) != self.size - 1:
            return None
        if not any(r.get("sync_state") == "sync" for r in streaming):
            return None
        # Patroni's view must name the synchronous standby too: it fails over only to it.
        if not any(m.role == "sync_standby" and m.state == "running" for m in members):
            return None
        return leader

    def wait_healthy(self, timeout: float, stable_for: float = 3.0) -> Node:
        """Wait until `healthy` has held for `stable_for` seconds with one leader; the leader.

        Holding for a few Patroni loops makes sure every member's view of the cluster (the
        synchronous standby above all) has caught up before the next event, or Patroni would
        refuse to fail over and restart the crashed primary in place.
        """
        since: list[tuple[float, str]] = []

        def stable() -> Node | None:
            leader = self.healthy()
            if leader is None:
                since.clear()
                return None
            now = time.monotonic()
            if not since or since[0][1] != leader.name:
                since[:] = [(now, leader.name)]
            return leader if now - since[0][0] >= stable_for else None

        return wait_for("a leader and every replica streaming", stable, timeout, step=0.25)

    def sync_standby(self) -> str | None:
        """The name of the synchronous standby, if one is named."""
        for member in self.members():
            if member.role in ("sync_standby", "sync standby"):
                return member.name
        return None

    # -- events -----------------------------------------------------------------------------

    def kill_primary(self) -> str:
        """SIGKILL the leader's postmaster (a crash Patroni must fail over from); its name."""
        leader = self.leader()
        if leader is None:
            raise HarnessError("no leader to kill")
        pid = leader.postmaster_pid()
        if pid is None:
            raise HarnessError(f"{leader.name} has no running postmaster")
        os.kill(pid, signal.SIGKILL)
        return leader.name

    def switchover(self) -> tuple[str, str]:
        """A planned `patronictl switchover` to the synchronous standby; (old, new) names."""
        leader = self.leader()
        candidate = self.sync_standby()
        if leader is None or candidate is None:
            raise HarnessError("no leader or synchronous standby for a switchover")
        self.patronictl("switchover", "--leader", leader.name, "--candidate", candidate, "--force")
        return leader.name, candidate

    def patronictl(self, *args: str, timeout: float = 60) -> str:
        """Run `patronictl -c <config> ARGS`; its output, HarnessError when it fails."""
        result = subprocess.run(  # noqa: S603 - fixed argv
            [*_as_os_user(), "patronictl", "-c", str(self.nodes[0].config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base,
            env={**os.environ, "HOME": str(self.base)},
            check=False,
        )
        with (self.logs / "patronictl.log").open("a") as log:
            log.write(f"$ patronictl {' '.join(args)}\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise HarnessError(f"patronictl {args[0]} failed: {result.stderr.strip()[-500:]}")
        return result.stdout

    def kill_primary_paused(self) -> str:
        """Pause Patroni, then SIGKILL the primary: no primary until `resume` (its name).

        Paused, Patroni neither restarts the crashed primary nor fails over, so the outage
        lasts exactly as long as the drill wants.
        """
        self.patronictl("pause", "--wait")
        return self.kill_primary()

    def resume(self) -> None:
        """End the pause: Patroni then fails over from the crashed primary."""
        self.patronictl("resume", "--wait")

    def listing(self) -> str:
        """`patronictl list`, for the logs of what happened."""
        return self.patronictl("list", timeout=30)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process group we created (start_new_session), then reap its leader."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def _kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _pids_using(directory: Path) -> list[int]:
    """Processes whose command line or working directory lies in `directory` (ours alone)."""
    found = []
    prefix = str(directory)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if prefix in cmdline or cwd.startswith(prefix):
            found.append(int(entry.name))
    return found
