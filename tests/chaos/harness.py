"""The fault-matrix harness: sizes, the settle-and-check step, and the results table."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.chaos.load import Load
from tests.checks import verify_org, wait_stored

RECOVERY_LIMIT_S = 30.0
RESULTS_DIR = Path(__file__).resolve().parents[2] / "bench" / "results"
SHORT_RESULTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "chaos-short"


@dataclass(frozen=True)
class Scale:
    """How big one fault run is: short in `make test`, long with `--chaos-long`."""

    long: bool
    events: int
    rate: float
    outage_s: float
    kills: int

    @classmethod
    def pick(cls, long: bool) -> Scale:
        if long:
            return cls(long=True, events=24_000, rate=800.0, outage_s=30.0, kills=6)
        return cls(long=False, events=800, rate=400.0, outage_s=5.0, kills=2)

    def ingest_env(self) -> dict[str, str]:
        """Ingest settings for a run. The short run shortens ack_wait to 5 s: a message that
        nats-py receives just after its fetch expired is stranded until ack_wait (see
        docs/reliability.md), which would otherwise dominate a short run's recovery time."""
        return {} if self.long else {"INGEST_ACK_WAIT": "5"}

    @property
    def duration_s(self) -> float:
        return self.events / self.rate


@dataclass
class ChaosResult:
    fault: str
    published: int
    acked: int
    stored: int
    lost: int
    duplicated: int
    recovery_s: float | None
    #: Redeliveries ingest absorbed as duplicates (the events table said "seen"), from metrics.
    absorbed: int | None = None
    ok: bool = False
    notes: str = ""


async def ingest_counter(url: str, outcome: str) -> int:
    """`fleetwatch_ingest_events_total{outcome=...}` summed over types, from `/metrics`."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(url + "/metrics")).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "fleetwatch_ingest_events":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("outcome") == outcome:
                total += sample.value
    return int(total)


async def settle(
    conn: asyncpg.Connection,
    org: str,
    load: Load,
    *,
    fault: str,
    lifted_at: float | None,
    results: list[ChaosResult],
    absorbed: int | None = None,
    notes: str = "",
    extra_published: int = 0,
) -> ChaosResult:
    """After the fault is lifted: time the recovery, let the load finish, drain, check.

    Recovery time: from the moment the fault was lifted until every event acknowledged by
    then is stored. Then the whole ledger is checked (set equality, no duplicates, fold).
    """
    recovery: float | None = None
    if lifted_at is not None:
        snapshot = set(load.acked)
        waited = await wait_stored(conn, org, snapshot, timeout=RECOVERY_LIMIT_S + 30)
        recovery = None if waited is None else time.monotonic() - lifted_at
    await load.finish()
    await wait_stored(conn, org, set(load.acked), timeout=60)
    verdict = await verify_org(conn, org, load.published, load.acked)
    result = ChaosResult(
        fault=fault,
        published=verdict.published + extra_published,
        acked=verdict.acked,
        stored=verdict.stored,
        lost=len(verdict.lost),
        duplicated=verdict.duplicated,
        recovery_s=None if recovery is None else round(recovery, 2),
        absorbed=absorbed,
        ok=verdict.ok and (lifted_at is None or recovery is not None),
        notes=notes,
    )
    results.append(result)
    assert verdict.ok, verdict.explain()
    if lifted_at is not None:
        assert recovery is not None, "not recovered"
        assert recovery <= RECOVERY_LIMIT_S, f"recovered in {recovery:.1f}s > 30s"
    return result


def write_table(results: list[ChaosResult], long: bool) -> Path:
    """Write the results as markdown and JSON; the long run's go to bench/results/."""
    if long:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        md, js = RESULTS_DIR / "chaos.md", RESULTS_DIR / "chaos.json"
    else:
        SHORT_RESULTS.parent.mkdir(parents=True, exist_ok=True)
        md, js = SHORT_RESULTS.with_suffix(".md"), SHORT_RESULTS.with_suffix(".json")
    lines = [
        f"# Fault matrix results ({'long' if long else 'short'} run)",
        "",
        "Command: `"
        + ("make chaos` (`pytest -q tests/chaos --chaos-long`)" if long else "pytest tests/chaos`"),
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| fault | published | acked | stored | lost | duplicated | recovery (s) "
        "| redeliveries absorbed | ok | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        rec = "—" if r.recovery_s is None else f"{r.recovery_s:.2f}"
        absorbed = "—" if r.absorbed is None else str(r.absorbed)
        lines.append(
            f"| {r.fault} | {r.published} | {r.acked} | {r.stored} | {r.lost} | {r.duplicated} "
            f"| {rec} | {absorbed} | {'yes' if r.ok else '**NO**'} | {r.notes} |"
        )
    md.write_text("\n".join(lines) + "\n")
    js.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return md
