"""Real PostgreSQL primaries and hot standbys, made in temporary directories, for failover tests.

A proxy can cut a connection, but only real servers can fail over: a standby that is promoted,
a primary that dies with commits in flight, a node that comes back read-only. This module makes
them with PostgreSQL's own tools (`initdb`, `pg_basebackup -R`, `pg_ctl`), each node on a free
port on 127.0.0.1 with its data directory under one temporary root, never touching the machine's
own server.

PostgreSQL refuses to run as root: when the tests run as root every tool runs as the `postgres`
OS user (`runuser`), which owns the directories; otherwise they run as the test's own user.

Nodes are made for speed, not durability: `fsync=off`, small shared buffers, trust
authentication. Acknowledged commits still survive a primary's death, because the primary
commits synchronously to its standby (`synchronous_standby_names = '*'` once it streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from tests.ports import free_port

#: Where the PostgreSQL 15 server binaries live (Debian's layout); TEST_PG_BIN overrides it.
PG_BIN = Path(os.environ.get("TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
#: The OS user the servers run as when the tests run as root.
PG_OS_USER = "postgres"
#: The database superuser every node has (`initdb -U`).
SUPERUSER = "postgres"
#: Longest any one tool (initdb, pg_basebackup, pg_ctl -w) may take on a loaded 2-core machine.
TOOL_TIMEOUT_SECONDS = 60.0
#: Longest a node may take to reach a state the test waits for (streaming, read-write).
STATE_TIMEOUT_SECONDS = 30.0

#: Settings every node gets: replication on, durability off (tests need speed, not crash safety
#: of the machine), logs quiet enough to read.
_BASE_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "replica",
    "max_wal_senders": "8",
    "max_replication_slots": "8",
    "wal_keep_size": "'64MB'",
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "on",
    "shared_buffers": "'16MB'",
    "max_connections": "100",
    # A standby whose primary went away tries again quickly rather than every 5 s.
    "wal_retrieve_retry_interval": "'200ms'",
    "wal_receiver_status_interval": "'1s'",
    "checkpoint_timeout": "'5min'",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] '",
}


def binaries_present() -> bool:
    """Whether the PostgreSQL server tools this module drives are installed."""
    return all((PG_BIN / tool).is_file() for tool in ("initdb", "pg_ctl", "pg_basebackup"))


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _run(*command: str | Path, timeout: float = TOOL_TIMEOUT_SECONDS) -> str:
    """Run a PostgreSQL tool as the user PostgreSQL accepts; its output, or raise with it."""
    argv = [str(part) for part in command]
    if _running_as_root():
        argv = ["runuser", "-u", PG_OS_USER, "--", *argv]
    result = subprocess.run(  # noqa: S603 - fixed tools, arguments built here
        argv, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def _give_to_postgres(path: Path) -> None:
    """Hand a directory made by the test to the OS user the servers run as (when root)."""
    if _running_as_root():
        entry = pwd.getpwnam(PG_OS_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc), read before the parent is killed."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # The command name is in parentheses and may hold spaces: the fields follow it.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers signal 0: it is dead all the same.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False


def running_postmaster(data_dir: Path) -> int | None:
    """The pid in `data_dir`'s postmaster.pid while that process runs, else None."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


@dataclass
class PgNode:
    """One PostgreSQL server: its data directory, port and log file."""

    name: str
    data_dir: Path
    port: int
    log_file: Path
    #: Whether `start()` ran and neither `stop()` nor `kill()` has since.
    started: bool = field(default=False)

    @property
    def host(self) -> str:
        """The address the node listens on."""
        return f"127.0.0.1:{self.port}"

    def dsn(self, database: str = "postgres") -> str:
        """An asyncpg/libpq URL for one database on this node alone."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def configure(self, settings: dict[str, str]) -> None:
        """Append settings to postgresql.conf: later lines win over initdb's and a copy's."""
        lines = "".join(f"{name} = {value}\n" for name, value in settings.items())
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(lines)

    def start(self) -> None:
        """Start the node and wait until it accepts connections (`pg_ctl -w`)."""
        _run(
            PG_BIN / "pg_ctl",
            "start",
            "-w",
            "-t",
            str(int(TOOL_TIMEOUT_SECONDS)),
            "-D",
            self.data_dir,
            "-l",
            self.log_file,
        )
        self.started = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the node cleanly (`fast`) or not (`immediate`), waiting until it is gone."""
        if self.postmaster_pid() is not None:
            _run(PG_BIN / "pg_ctl", "stop", "-w", "-m", mode, "-D", self.data_dir)
        self.started = False

    def postmaster_pid(self) -> int | None:
        """The running postmaster's process id, from postmaster.pid; None when it is not up."""
        return running_postmaster(self.data_dir)

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash of PostgreSQL's supervisor does.

        Its backends notice the postmaster's death by themselves and close their connections (each
        client may get a last FATAL message, or only the connection's end), as in production.
        This returns once every one of them is gone, so the port refuses connections from then
        on; any still there after STATE_TIMEOUT_SECONDS is killed too.
        """
        pid = self.postmaster_pid()
        self.started = False
        if pid is None:
            return
        os.kill(pid, signal.SIGSTOP)  # no new backend forks while they are listed
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + STATE_TIMEOUT_SECONDS
        while any(alive(child) for child in [pid, *children]):
            if time.monotonic() > deadline:
                for child in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
                deadline = time.monotonic() + STATE_TIMEOUT_SECONDS
            time.sleep(0.01)

    def promote(self) -> None:
        """Promote a standby and wait until it has left recovery (`pg_ctl promote -w`)."""
        _run(
            PG_BIN / "pg_ctl",
            "promote",
            "-w",
            "-t",
            str(int(TOOL_TIMEOUT_SECONDS)),
            "-D",
            self.data_dir,
        )

    def log(self) -> str:
        """What the server logged, for failure messages."""
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    async def execute(self, *statements: str, database: str = "postgres") -> None:
        """Run statements on this node over a connection of their own."""
        connection = await asyncpg.connect(self.dsn(database), timeout=5)
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    async def fetchval(self, query: str, database: str = "postgres") -> object:
        """One value, read over a connection of its own."""
        connection = await asyncpg.connect(self.dsn(database), timeout=5)
        try:
            return await connection.fetchval(query)
        finally:
            await connection.close()

    async def is_read_write(self) -> bool:
        """Whether a new connection here may write: out of recovery and not read-only by default."""
        try:
            connection = await asyncpg.connect(self.dsn(), timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        try:
            read_only = await connection.fetchval("SHOW transaction_read_only")
            in_recovery = await connection.fetchval("SELECT pg_is_in_recovery()")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        finally:
            connection.terminate()
        return read_only == "off" and not in_recovery

    async def wait_read_write(self, seconds: float = STATE_TIMEOUT_SECONDS) -> None:
        """Return once the node accepts read-write connections; raise after `seconds`."""
        deadline = time.monotonic() + seconds
        while not await self.is_read_write():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not read-write within {seconds}s:\n{self.log()}")
            await asyncio.sleep(0.05)

    async def wait_in_recovery(self, seconds: float = STATE_TIMEOUT_SECONDS) -> None:
        """Return once the node answers as a hot standby (in recovery)."""
        deadline = time.monotonic() + seconds
        while True:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                if await self.fetchval("SELECT pg_is_in_recovery()"):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not in recovery within {seconds}s:\n{self.log()}")
            await asyncio.sleep(0.05)


class PgCluster:
    """Nodes made under one temporary root; `cleanup()` stops every one and removes the root.

    Typical use: `primary = cluster.primary("a")`, `standby = cluster.standby_of(primary, "b")`,
    then `await cluster.replicate_synchronously(primary)`.
    """

    def __init__(self, root: Path | None = None, template: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="taskservice-pg-"))
        self.root.chmod(0o755)
        _give_to_postgres(self.root)
        self._template = template
        self.nodes: list[PgNode] = []

    def _new_node(self, name: str) -> PgNode:
        node_dir = self.root / name
        node_dir.mkdir(mode=0o700)
        _give_to_postgres(node_dir)
        node = PgNode(name, node_dir / "data", free_port(), node_dir / "server.log")
        self.nodes.append(node)
        return node

    def _own_settings(self, node: PgNode) -> dict[str, str]:
        return {
            **_BASE_SETTINGS,
            "port": str(node.port),
            "unix_socket_directories": f"'{node.data_dir.parent}'",
            "cluster_name": f"'{node.name}'",
        }

    def primary(self, name: str) -> PgNode:
        """A new primary, started: a copy of the template's data directory, or a fresh initdb."""
        node = self._new_node(name)
        if self._template is not None:
            _run("cp", "-a", self._template, node.data_dir)
        else:
            initdb(node.data_dir)
        node.configure(self._own_settings(node))
        node.start()
        return node

    def standby_of(self, primary: PgNode, name: str) -> PgNode:
        """A new hot standby streaming from `primary`, started (`pg_basebackup -R -X stream`)."""
        node = self._new_node(name)
        self.rebuild_as_standby(node, primary)
        return node

    def rebuild_as_standby(self, node: PgNode, primary: PgNode) -> None:
        """Replace `node`'s data with a base backup of `primary` and start it as its standby.

        The node keeps its name and port: to the server, the same address is now a standby.
        """
        node.stop(mode="immediate")
        if node.data_dir.exists():
            _run("rm", "-rf", node.data_dir)
        _run(
            PG_BIN / "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            SUPERUSER,
            "-D",
            node.data_dir,
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        )
        # The copy carries the primary's own lines (its port, its sync standbys): ours win.
        node.configure({**self._own_settings(node), "synchronous_standby_names": "''"})
        node.start()

    async def replicate_synchronously(
        self, primary: PgNode, seconds: float = STATE_TIMEOUT_SECONDS
    ) -> None:
        """Make `primary` wait for a standby's flush at every commit, once one is streaming.

        Set only once a standby streams: before that every commit would wait forever. From then
        on a commit the primary acknowledged is on a standby too, so killing the primary loses
        nothing a client was told had happened.
        """
        query = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        await self._until(primary, query, seconds, "a standby streaming")
        await primary.execute(
            "ALTER SYSTEM SET synchronous_standby_names = '*'", "SELECT pg_reload_conf()"
        )
        query = "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'"
        await self._until(primary, query, seconds, "a synchronous standby")

    async def _until(self, node: PgNode, count_query: str, seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not await node.fetchval(count_query):
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n.name}\n{n.log()}" for n in self.nodes)
                raise TimeoutError(f"{node.name}: no {what} within {seconds}s\n{logs}")
            await asyncio.sleep(0.05)

    def cleanup(self) -> None:
        """Stop every node (immediately: nothing here needs to be kept) and remove the root."""
        errors = []
        for node in self.nodes:
            try:
                if node.postmaster_pid() is not None:
                    node.stop(mode="immediate")
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                errors.append(str(exc))
                with contextlib.suppress(RuntimeError):
                    node.kill()
        shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise RuntimeError("stopping PostgreSQL nodes failed:\n" + "\n".join(errors))


def initdb(data_dir: Path) -> None:
    """A new, empty data directory: trust authentication (replication too), superuser postgres."""
    _run(
        PG_BIN / "initdb",
        "-D",
        data_dir,
        "-U",
        SUPERUSER,
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
        "--no-instructions",
    )


def multi_host_url(nodes: Sequence[PgNode], database: str, *, libpq_form: bool = False) -> str:
    """The server's URL naming every node, connecting only to whichever is read-write.

    The SQLAlchemy form repeats `host=` query parameters; the libpq form lists `host:port`
    pairs in the authority, as `psql` and most other clients take them.
    """
    if libpq_form:
        hosts = ",".join(node.host for node in nodes)
        return f"postgresql://{SUPERUSER}@{hosts}/{database}?target_session_attrs=read-write"
    hosts = "&".join(f"host={node.host}" for node in nodes)
    return f"postgresql+asyncpg://{SUPERUSER}@/{database}?{hosts}&target_session_attrs=read-write"
