"""`fleetwatch reconcile`: find-running, cross-reference, and one pass with --dry-run or --fix."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import nats
import orjson
from nats.aio.client import Client as NatsClient

from services.reconciler import repo
from services.reconciler.app import build_reconciler, close_reconciler
from services.reconciler.engines import EngineError
from services.reconciler.loop import PassReport
from services.reconciler.rules import Decision, Row
from services.reconciler.settings import ReconcilerSettings
from shared.commands import connect_database
from shared.urls import redacted

PROGRESS_EVERY = 500


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetwatch reconcile",
        description="compare executions with the engines that ran them "
        "(settings: DATABASE_URL, NATS_URL, RECONCILER_*)",
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=["find-running", "cross-reference"],
        help="find-running: list running executions; cross-reference: every row vs its engine",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="report the drift, change nothing")
    mode.add_argument("--fix", action="store_true", help="publish corrective events")
    parser.add_argument("--org", help="only this org's executions")
    parser.add_argument("--agent", help="only this agent's executions")
    parser.add_argument("--engine", help="only executions of this engine (its configured name)")
    parser.add_argument(
        "--older-than",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="find-running: only executions running longer than this",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--temporal-address", help="default: $RECONCILER_TEMPORAL_ADDRESS")
    parser.add_argument("--http-base-url", help="default: $RECONCILER_HTTP_BASE_URL")
    return parser


def _settings(args: argparse.Namespace) -> ReconcilerSettings:
    overrides: dict[str, Any] = {}
    if args.temporal_address:
        overrides["temporal_address"] = args.temporal_address
    if args.http_base_url:
        overrides["http_base_url"] = args.http_base_url
    return ReconcilerSettings(**overrides)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """A plain aligned table; long cells are cut so a row stays on one line."""
    cut = [[cell if len(cell) <= 60 else cell[:57] + "..." for cell in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cut]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), file=out)
    for row in cut:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _age(row: Row, now: datetime) -> str:
    # A start a little ahead of our clock (the agent's runs fast) is "just started", not
    # a negative age that divmod would print as "-1h59m".
    seconds = max(0, int((now - row.since).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def decision_dict(d: Decision) -> dict[str, Any]:
    return {
        "kind": d.kind.value,
        "action": d.action.value,
        "reason": d.reason,
        "org": d.org,
        "execution_id": d.execution_id,
        "agent_name": d.agent_name,
        "engine": d.engine,
        "external_id": d.external_id,
        "our_status": d.our_status.value if d.our_status else None,
        "engine_status": d.engine_status.value if d.engine_status else None,
        "publish_status": d.publish_status.value if d.publish_status else None,
    }


def _print_decisions(decisions: Sequence[Decision], out: TextIO) -> None:
    table(
        [
            "ORG",
            "EXECUTION",
            "AGENT",
            "ENGINE",
            "EXTERNAL ID",
            "OURS",
            "THEIRS",
            "KIND",
            "ACTION",
            "REASON",
        ],
        [
            [
                d.org or "-",
                d.execution_id or "-",
                d.agent_name or "-",
                d.engine or "-",
                d.external_id or "-",
                d.our_status.value if d.our_status else "-",
                d.engine_status.value if d.engine_status else "-",
                d.kind.value,
                d.action.value,
                d.reason,
            ]
            for d in decisions
        ],
        out,
    )


def _progress(err: TextIO) -> Any:
    def report(done: int, total: int) -> None:
        if done % PROGRESS_EVERY == 0 or done == total:
            print(f"checked {done}/{total}", file=err, flush=True)

    return report


async def _find_running(args: argparse.Namespace, out: TextIO) -> int:
    settings = _settings(args)
    conn = await connect_database(settings.database_url, setting="DATABASE_URL")
    try:
        rows = await repo.running_rows(conn, repo.Filters(args.org, args.agent, args.engine))
    finally:
        await conn.close()
    now = datetime.now(UTC)
    # Ages are counted from 0: a run whose start is a little ahead of our clock (its agent's
    # runs fast) is still listed without --older-than, not left out as "running -5 s".
    rows = [r for r in rows if max(0.0, (now - r.since).total_seconds()) >= args.older_than]
    if args.json:
        for r in rows:
            out.write(
                orjson.dumps(
                    {
                        "org": r.org,
                        "execution_id": r.id,
                        "agent_name": r.agent_name,
                        "engine": r.engine,
                        "external_id": r.external_id,
                        "started_at": r.since.isoformat(),
                        "running_seconds": round(max(0.0, (now - r.since).total_seconds()), 1),
                    }
                ).decode()
                + "\n"
            )
        return 0
    table(
        ["ORG", "EXECUTION", "AGENT", "ENGINE", "EXTERNAL ID", "RUNNING FOR"],
        [
            [r.org, r.id, r.agent_name, r.engine or "-", r.external_id or "-", _age(r, now)]
            for r in rows
        ],
        out,
    )
    print(f"{len(rows)} running", file=out)
    return 0


#: How long `--fix` waits for NATS to answer before giving up (seconds).
NATS_CONNECT_TIMEOUT_S = 10.0


async def _quiet(_exc: Exception) -> None:
    return None


async def _connect_nats(url: str) -> NatsClient:
    """NATS for publishing corrections, or ConnectionError naming it: nats-py alone tries a
    first connect 60 times, 2 s apart, before it says anything."""
    connecting = nats.connect(
        url,
        connect_timeout=2,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        # nats-py's default logs a whole traceback for every failed attempt; the one line
        # below says what an operator needs.
        error_cb=_quiet,
    )
    try:
        async with asyncio.timeout(NATS_CONNECT_TIMEOUT_S):
            return await connecting
    except TimeoutError:
        raise ConnectionError(
            f"NATS at {redacted(url)} did not answer within {NATS_CONNECT_TIMEOUT_S:g} s "
            "(is it running? check NATS_URL)"
        ) from None


async def _pass(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    settings = _settings(args)
    nc = await _connect_nats(settings.nats_url) if args.fix else None
    try:
        reconciler = await build_reconciler(settings, nc)
    except EngineError as exc:
        print(f"fleetwatch reconcile: {exc}", file=err)
        return 2
    try:
        if not reconciler.engines:
            print(
                "fleetwatch reconcile: no engine configured (set RECONCILER_TEMPORAL_ADDRESS "
                "or RECONCILER_HTTP_BASE_URL)",
                file=err,
            )
            return 2
        if args.engine is not None and args.engine not in reconciler.engines:
            # Else a typo would check nothing and report "0 mismatches" as if all were well.
            print(
                f"fleetwatch reconcile: engine {args.engine!r} is not configured "
                f"(configured: {', '.join(sorted(reconciler.engines))})",
                file=err,
            )
            return 2
        report = await reconciler.run_pass(
            repo.Filters(args.org, args.agent, args.engine),
            fix=bool(args.fix),
            progress=None if args.json else _progress(err),
        )
    finally:
        await close_reconciler(reconciler)
        if nc is not None:
            await nc.drain()
    _print_report(args, report, out)
    # Some engine did not answer (or some row could not be checked): not a clean pass.
    return 1 if report.engine_errors else 0


def _print_report(args: argparse.Namespace, report: PassReport, out: TextIO) -> None:
    shown = report.decisions if args.command == "cross-reference" else report.mismatches
    if args.json:
        out.write(
            orjson.dumps(
                {
                    "mode": "fix" if args.fix else "dry-run",
                    "checked": report.checked,
                    "mismatches": len(report.mismatches),
                    "published": report.published,
                    "corrections": report.fixed,
                    "engine_errors": report.engine_errors,
                    "duration_s": round(report.duration_s, 3),
                    "decisions": [decision_dict(d) for d in shown],
                }
            ).decode()
            + "\n"
        )
        return
    _print_decisions(shown, out)
    verb = f"published {report.fixed} correction(s)" if args.fix else "dry run: nothing changed"
    print(
        f"{report.checked} checked, {len(report.mismatches)} mismatch(es), "
        f"{len(report.engine_errors)} engine error(s); {verb}; {report.duration_s:.2f} s",
        file=out,
    )


def main(argv: Sequence[str] = ()) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "find-running":
        if args.fix:
            parser.error("find-running only lists; use --fix alone to publish corrections")
        return asyncio.run(_find_running(args, sys.stdout))
    if args.command is None and not (args.dry_run or args.fix):
        parser.error("give a command (find-running, cross-reference) or --dry-run / --fix")
    if args.command == "cross-reference" and args.fix:
        parser.error("cross-reference only reports; use --fix alone to publish corrections")
    return asyncio.run(_pass(args, sys.stdout, sys.stderr))
