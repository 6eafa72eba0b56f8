"""The `taskservice` command: serve, migrate, create-admin, purge.

Each subcommand loads and validates the settings first; a bad value ends the process with one line
on stderr and exit status 2, before anything else happens.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Callable, Sequence

from taskservice.config import ConfigError, Settings, load_settings, with_signing_key
from taskservice.log import configure_logging

#: Exit status for configuration errors and bad command lines (argparse uses 2 as well).
EXIT_USAGE = 2
#: Exit status when the server cannot start (for example, its port is taken).
EXIT_FAILURE = 1


def _serve(args: argparse.Namespace) -> int:
    """Serve gRPC until SIGTERM or SIGINT."""
    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["grpc_host"] = args.host
    if args.port is not None:
        overrides["grpc_port"] = args.port
    if args.workers is not None:
        overrides["workers"] = args.workers
    settings = _settings(**overrides)
    try:
        if settings.workers > 1:
            from taskservice.workers import Supervisor  # never imports gRPC in this process

            return Supervisor(settings, settings.workers).run()
        from taskservice import loop
        from taskservice.server import run

        loop.run(run(settings))
    except RuntimeError as exc:
        print(f"taskservice: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _migrate(args: argparse.Namespace) -> int:
    """Apply every pending migration, once the database accepts connections.

    A database that is not there (or refuses us) ends the command with one line on stderr and
    exit status 1, after at most `--wait-seconds` of retrying.
    """
    from taskservice.db.migrations import DatabaseNotReady, upgrade, wait_for_database

    settings = _settings(require_signing_key=False)
    try:
        wait_for_database(
            settings.sqlalchemy_url,
            args.wait_seconds,
            connect_timeout=settings.db_connect_timeout_seconds,
        )
    except DatabaseNotReady as exc:
        print(f"taskservice: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    upgrade(settings.sqlalchemy_url)
    return 0


def _create_admin(args: argparse.Namespace) -> int:
    """Create an admin, or promote (and reactivate) an existing user."""
    from taskservice.db.engine import Database, create_engine
    from taskservice.errors import DomainError
    from taskservice.security.passwords import PasswordHasher
    from taskservice.services.auth_state import AuthStateStore
    from taskservice.services.users import ensure_admin

    settings = _settings(require_signing_key=False)

    def read_password() -> str:
        if args.password_stdin:
            return sys.stdin.readline().rstrip("\r\n")
        password = getpass.getpass("Password for the new admin: ")
        if getpass.getpass("Repeat the password: ") != password:
            raise DomainError("PASSWORD_MISMATCH", "the passwords do not match")
        return password

    async def create() -> tuple[str, bool]:
        engine = create_engine(settings)
        hasher = PasswordHasher(settings.bcrypt_rounds, threads=1)
        try:
            database = Database(engine)
            user, created = await ensure_admin(
                database, hasher, AuthStateStore(database), args.email, read_password
            )
        finally:
            hasher.close()
            await engine.dispose()
        return user.email, created

    try:
        email, created = asyncio.run(create())
    except DomainError as exc:
        print(f"taskservice: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{'created' if created else 'promoted'} admin {email}")
    return 0


def _purge(_args: argparse.Namespace) -> int:
    """Delete for good every trashed task whose purge time has come (servers do it too)."""
    from taskservice.db.engine import Database, create_engine
    from taskservice.db.types import utcnow
    from taskservice.services.tasks import purge_expired_tasks

    settings = _settings(require_signing_key=False)

    async def purge() -> int:
        engine = create_engine(settings)
        try:
            return await purge_expired_tasks(Database(engine), utcnow())
        finally:
            await engine.dispose()

    print(f"purged {asyncio.run(purge())} task(s) from the trash")
    return 0


def _settings(*, require_signing_key: bool = True, **overrides: object) -> Settings:
    settings = load_settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    return with_signing_key(settings) if require_signing_key else settings


#: Longest `migrate --wait-seconds`: an hour is already far beyond any database's start.
MAX_WAIT_SECONDS = 3600.0


def _wait_seconds(text: str) -> float:
    """Parse `--wait-seconds`: a number of seconds from 0 to MAX_WAIT_SECONDS."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= seconds <= MAX_WAIT_SECONDS:
        raise argparse.ArgumentTypeError(f"must be from 0 to {MAX_WAIT_SECONDS:g}, not {text}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per operator task."""
    parser = argparse.ArgumentParser(
        prog="taskservice",
        description="Task management over gRPC. Configured by environment variables "
        "(see .env.example).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve gRPC (health and reflection included)")
    serve.add_argument("--host", help="address to listen on (overrides GRPC_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides GRPC_PORT)")
    serve.add_argument(
        "--workers",
        type=int,
        help="worker processes sharing the port, supervised (overrides WORKERS; default 1)",
    )
    serve.set_defaults(handler=_serve)

    migrate = commands.add_parser(
        "migrate", help="apply database migrations (alembic upgrade head)"
    )
    migrate.add_argument(
        "--wait-seconds",
        type=_wait_seconds,
        default=0.0,
        metavar="N",
        help="wait up to N seconds for the database to accept connections, retrying with a "
        "short backoff (default 0: one attempt); for starting together with the database",
    )
    migrate.set_defaults(handler=_migrate)

    create_admin = commands.add_parser(
        "create-admin",
        help="create an admin, or promote an existing user (how the first admin exists)",
    )
    create_admin.add_argument("--email", required=True, help="the admin's email")
    create_admin.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin instead of prompting "
        "(only needed when the user does not exist yet)",
    )
    create_admin.set_defaults(handler=_create_admin)

    purge = commands.add_parser(
        "purge",
        help="delete for good the trashed tasks whose purge time has come "
        "(servers also do it every few minutes)",
    )
    purge.set_defaults(handler=_purge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `taskservice` and `python -m taskservice`."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"taskservice: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
