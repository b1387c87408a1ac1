"""The `fleetwatch` console command: one subcommand per service and per operator task."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import select
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

# Each command lives with the code it drives; importing it lazily keeps `--help` fast and
# lets a service start without importing the others.
COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("services.ingest.main:main", "run the ingest service (port 8002)"),
    "query": ("services.query.main:main", "run the query API and dashboard (port 8000)"),
    "notifier": ("services.notifier.main:main", "run the WebSocket notifier (port 8001)"),
    "reconciler": ("services.reconciler.main:main", "run the reconciler loop (port 8003)"),
    "reconcile": ("services.reconciler.cli:main", "find and fix drift against engines"),
    "migrate": ("shared.commands:migrate_main", "apply the database schema"),
    "retention": ("shared.retention:main", "delete data past each org's retention_days"),
    "token": ("shared.commands:token_main", "mint a development token"),
    "up": ("shared.up:main", "run the whole stack locally with a demo fleet"),
    "admin": ("services.query.admin:main", "manage orgs, users, agents and shares"),
    "apikey": ("services.ingest.apikeys:main", "manage per-org API keys for the HTTP gateway"),
    "emit": ("shared.publisher.cli:emit_main", "publish one event from the shell"),
    "demo": ("shared.publisher.demo:main", "simulate a fleet of agents publishing events"),
}


def _usage() -> str:
    lines = ["usage: fleetwatch <command> [options]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`fleetwatch <command> --help` shows a command's options."]
    return "\n".join(lines)


def _load(target: str) -> Callable[[Sequence[str]], int | None]:
    module_name, func_name = target.split(":")
    func: Callable[[Sequence[str]], int | None] = getattr(
        importlib.import_module(module_name), func_name
    )
    return func


def _stdout_gone() -> bool:
    """Whether standard output is a pipe nobody reads any more (`fleetwatch ... | head`): a
    broken pipe there ends the command quietly, while one to a server is an error to show."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    poll = select.poll()
    poll.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poll.poll(0))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status. Output cut short by its reader (`| head`) ends it
    quietly with 141, as a shell reports a command ended by SIGPIPE."""
    try:
        code = _dispatch(argv)
        sys.stdout.flush()  # here, so a broken pipe is caught here, not at exit
    except SystemExit:
        _flush_or_drop_stdout()  # argparse's --help and usage errors end this way
        raise
    except BrokenPipeError:
        if not _stdout_gone():
            raise
        _drop_stdout()
        return 141
    return code


def _drop_stdout() -> None:
    # Python flushes stdout once more at exit: point it somewhere that takes the rest.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _flush_or_drop_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        if not _stdout_gone():
            raise
        _drop_stdout()


def _dispatch(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"fleetwatch: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        result = _load(COMMANDS[name][0])(rest)
    except KeyboardInterrupt:
        # Ctrl-C: what was committed stays; a traceback would only hide that line.
        print(f"\nfleetwatch {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_gone():
            raise
        message = operator_error(exc, migrating=name == "migrate")
        if message is None:
            raise  # a bug: the traceback is what helps
        print(f"fleetwatch {name}: {message}", file=sys.stderr)
        return 1
    return int(result or 0)


def tcp_port(text: str) -> int:
    """An argparse type: a TCP port number (1-65535)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is no port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is outside 1-65535")
    return port


def operator_error(exc: BaseException, *, migrating: bool = False) -> str | None:
    """One line for what an operator can act on (a server that does not answer, a database
    not migrated, a setting refused); None for anything else. While `migrating`, a missing
    table is a migration's own error, not a hint to run the command that failed."""
    import asyncpg  # here, not at the top: `--help` and services that never fail stay light
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    if not migrating and isinstance(
        exc, asyncpg.UndefinedTableError | asyncpg.UndefinedFunctionError
    ):
        return f"{exc} (is the database migrated? `fleetwatch migrate`)"
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        return f"database: {type(exc).__name__}: {exc}"
    if isinstance(exc, ValidationError):
        where = "; ".join(
            # A rule of several settings (an empty `loc`) names them in its own words.
            f"{_setting_name(exc.title, e['loc'])}: {e['msg']}"
            if e["loc"]
            else e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        return f"invalid setting: {where}"
    if isinstance(exc, SettingsError):
        # pydantic-settings could not even parse a value (bad JSON for a dict or list field).
        field = re.search(r'field "([^"]+)"', str(exc))
        if field is not None:
            name = _setting_name(None, (field.group(1),))
            return f"invalid setting: {name}: not valid JSON"
        return f"invalid setting: {exc}"
    if isinstance(exc, ConnectionError | TimeoutError | OSError):
        return f"{type(exc).__name__}: {exc}"
    return None


def _settings_classes(title: str | None) -> list[type[BaseSettings]]:
    """The loaded settings classes named `title` (any, for None)."""
    from pydantic_settings import BaseSettings

    found: list[type[BaseSettings]] = []
    todo = list(BaseSettings.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if title is None or cls.__name__ == title:
            found.append(cls)
    return found


def _setting_name(title: str | None, loc: tuple[int | str, ...]) -> str:
    """The environment variable an operator sets for a field (`INGEST_BATCH_SIZE`, not
    `batch_size`); the field's path when no loaded settings class knows it."""
    path = ".".join(str(p) for p in loc) or "value"
    if not loc or not isinstance(loc[0], str):
        return path
    names: list[str] = []
    for cls in _settings_classes(title):
        field = cls.model_fields.get(loc[0])
        if field is None:
            continue
        alias = field.validation_alias
        prefix = str(cls.model_config.get("env_prefix") or "")
        name = alias if isinstance(alias, str) else f"{prefix}{loc[0]}".upper()
        if name not in names:
            names.append(name)
    if not names:
        return path
    rest = "".join(f".{p}" for p in loc[1:])
    return " or ".join(sorted(names)) + rest


if __name__ == "__main__":
    raise SystemExit(main())
