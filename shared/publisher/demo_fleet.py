"""The simulated fleet of `fleetwatch demo`: who the agents are and how one run of each goes.

Pure: a seeded `random.Random` in, plain records out, so a run plan can be tested (and
replayed) without NATS.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["success", "failed", "stuck"]

DEMO_ORGS: tuple[str, ...] = ("acme", "globex", "initech")

# (name, project, workflow, schedule or None, mean seconds, failure rate, steps, calls)
_Catalogue = tuple[str, str, str | None, str | None, float, float, tuple[str, ...], tuple[str, ...]]
_CATALOGUE: dict[str, tuple[_Catalogue, ...]] = {
    "acme": (
        (
            "invoice-agent",
            "billing",
            "month-end",
            "sched-hourly-invoices",
            6.0,
            0.06,
            ("fetch-orders", "render-pdf", "send-email"),
            ("pdf-renderer",),
        ),
        ("refund-agent", "billing", None, None, 4.0, 0.12, ("lookup-charge", "stripe-refund"), ()),
        ("pdf-renderer", "billing", None, None, 2.0, 0.03, ("render",), ()),
        (
            "ticket-triage",
            "support",
            "inbox",
            "sched-5min-triage",
            3.0,
            0.05,
            ("classify", "route"),
            ("kb-writer", "sentiment-scorer"),
        ),
        ("kb-writer", "support", None, None, 9.0, 0.08, ("search-kb", "draft", "review"), ()),
        ("sentiment-scorer", "support", None, None, 1.5, 0.02, ("score",), ()),
        (
            "lead-scorer",
            "growth",
            "crm-sync",
            "sched-nightly-leads",
            5.0,
            0.04,
            ("pull-crm", "score", "push-crm"),
            (),
        ),
        (
            "seo-auditor",
            "growth",
            None,
            "sched-daily-seo",
            14.0,
            0.10,
            ("crawl", "analyze", "report"),
            (),
        ),
        ("ruby-agent", "growth", None, None, 7.0, 0.07, ("plan", "execute"), ("lead-scorer",)),
        ("standup-bot", "", None, "sched-daily-standup", 2.5, 0.02, ("collect", "post"), ()),
    ),
    "globex": (
        (
            "paper-reader",
            "research",
            "lit-review",
            None,
            12.0,
            0.09,
            ("fetch-pdf", "extract", "summarize"),
            ("citation-checker",),
        ),
        ("citation-checker", "research", None, None, 3.0, 0.05, ("resolve-doi",), ()),
        (
            "experiment-runner",
            "research",
            "ablation",
            "sched-nightly-ablation",
            20.0,
            0.15,
            ("provision-gpu", "train", "evaluate"),
            (),
        ),
        (
            "incident-responder",
            "ops",
            "pager",
            None,
            8.0,
            0.11,
            ("gather-logs", "diagnose", "open-ticket"),
            ("log-summarizer",),
        ),
        ("log-summarizer", "ops", None, None, 2.0, 0.03, ("query-loki", "summarize"), ()),
        (
            "cost-watcher",
            "ops",
            None,
            "sched-hourly-costs",
            3.5,
            0.04,
            ("pull-billing", "compare"),
            (),
        ),
        ("deploy-reviewer", "ops", "release", None, 6.0, 0.06, ("diff", "review"), ()),
        ("oncall-digest", "", None, "sched-daily-digest", 4.0, 0.03, ("collect", "post"), ()),
    ),
    "initech": (
        (
            "helpdesk-agent",
            "it-helpdesk",
            "tickets",
            None,
            5.0,
            0.07,
            ("classify", "lookup-user", "resolve"),
            ("password-reset", "license-bot"),
        ),
        ("password-reset", "it-helpdesk", None, None, 1.5, 0.05, ("verify", "reset"), ()),
        ("license-bot", "it-helpdesk", None, None, 2.5, 0.04, ("check-seat", "assign"), ()),
        (
            "tps-reporter",
            "reporting",
            "weekly-tps",
            "sched-weekly-tps",
            10.0,
            0.08,
            ("query-warehouse", "build-report", "email"),
            ("chart-maker",),
        ),
        ("chart-maker", "reporting", None, None, 3.0, 0.03, ("plot",), ()),
        ("stapler-tracker", "reporting", None, "sched-hourly-inventory", 2.0, 0.02, ("scan",), ()),
        (
            "expense-auditor",
            "reporting",
            None,
            None,
            8.0,
            0.10,
            ("pull-receipts", "check-policy", "flag"),
            (),
        ),
    ),
}

#: (error_type, message) pairs agents really fail with.
ERRORS: tuple[tuple[str, str], ...] = (
    ("RateLimitError", "429 Too Many Requests: rate limit reached for model gpt-4o"),
    ("TimeoutError", "upstream https://api.stripe.com did not answer within 30s"),
    ("ContextWindowExceeded", "prompt is 131,204 tokens; the model's maximum is 128,000"),
    ("ToolError", "mcp:github.create_issue returned 403: Resource not accessible by integration"),
    ("ValidationError", "model output did not match schema: field 'total' is required"),
    ("ConnectionError", "postgres://orders-db:5432: connection refused"),
    ("PermissionError", "service account lacks scope drive.readonly"),
    ("KeyError", "'customer_id'"),
)
STEP_ERRORS: tuple[tuple[str, str], ...] = (
    ("TimeoutError", "read timed out after 10s"),
    ("HTTPError", "502 Bad Gateway from upstream"),
    ("RateLimitError", "429: slow down"),
    ("ConnectionResetError", "connection reset by peer"),
)
MCP_TOOLS = (
    "mcp:github.search_issues",
    "mcp:slack.post_message",
    "mcp:gdrive.read_file",
    "mcp:postgres.query",
    "mcp:jira.create_issue",
    "mcp:browser.fetch",
)
TASKS = (
    "Process the invoices received today",
    "Summarize yesterday's support tickets by urgency",
    "Find leads that opened the pricing page twice this week",
    "Refund order #{n} (duplicate charge)",
    "Review deploy {n} for risky migrations",
    "Why did p95 latency on checkout jump at 03:10?",
    "Reset the password of user u{n}",
    "Draft a KB article about SSO login loops",
    "Check the citations of paper arXiv:24{n}",
    "Weekly TPS report for team {n}",
)


@dataclass(frozen=True, slots=True)
class AgentSpec:
    org: str
    name: str
    project: str | None
    workflow: str | None
    schedule_id: str | None
    mean_s: float
    failure_rate: float
    steps: tuple[str, ...]
    calls: tuple[str, ...]


@dataclass(slots=True)
class StepPlan:
    name: str
    retry_policy: str
    max_attempts: int | None
    #: One entry per attempt: None for success, else (error_type, message).
    attempts: list[tuple[str, str] | None]
    seconds: float


@dataclass(slots=True)
class RunPlan:
    agent: AgentSpec
    triggered_by: str
    message: str
    seconds: float
    outcome: Outcome
    error: tuple[str, str] | None
    response: str | None
    tokens_in: int
    tokens_out: int
    cost: float
    context_used: int
    context_max: int
    tool_calls: list[str]
    steps: list[StepPlan] = field(default_factory=list)
    #: Runs of other agents this one triggers, after the step of the same index.
    children: list[RunPlan] = field(default_factory=list)


def fleet(orgs: tuple[str, ...] = DEMO_ORGS) -> list[AgentSpec]:
    """The demo's agents; orgs outside the catalogue borrow acme's agents."""
    agents: list[AgentSpec] = []
    for org in orgs:
        for name, project, workflow, schedule, mean_s, failure, steps, calls in _CATALOGUE.get(
            org, _CATALOGUE["acme"]
        ):
            agents.append(
                AgentSpec(
                    org=org, name=name, project=project or None, workflow=workflow,
                    schedule_id=schedule, mean_s=mean_s, failure_rate=failure,
                    steps=steps, calls=calls,
                )
            )  # fmt: skip
    return agents


def _trigger(rng: random.Random, agent: AgentSpec) -> str:
    if agent.schedule_id and rng.random() < 0.6:
        return "schedule"
    return rng.choices(("manual", "user", "api", "mcp"), weights=(4, 3, 2, 2))[0]


def _step(rng: random.Random, name: str, seconds: float) -> StepPlan:
    policy = rng.choices(("none", "fixed", "exponential", "forever"), weights=(4, 2, 3, 1))[0]
    max_attempts = {"none": 1, "fixed": 3, "exponential": 4, "forever": None}[policy]
    attempts: list[tuple[str, str] | None] = []
    # Most steps pass at once; some retry as their policy expects; a few are re-run by hand
    # (a retry the policy did not plan: "unexpected").
    while True:
        budget = max_attempts or 6
        retry_allowed = len(attempts) + 1 < budget or (policy == "none" and rng.random() < 0.3)
        if rng.random() < 0.12 and retry_allowed and len(attempts) < 5:
            attempts.append(rng.choice(STEP_ERRORS))
            continue
        attempts.append(None)
        return StepPlan(name, policy, max_attempts, attempts, seconds)


def plan_run(
    rng: random.Random,
    agent: AgentSpec,
    by_name: dict[tuple[str, str], AgentSpec],
    *,
    triggered_by: str | None = None,
    depth: int = 0,
    stuck_rate: float = 0.02,
    speed: float = 1.0,
) -> RunPlan:
    seconds = min(rng.lognormvariate(0, 0.6) * agent.mean_s / speed, 120.0 / speed)
    roll = rng.random()
    outcome: Outcome = (
        "stuck" if roll < stuck_rate
        else "failed" if roll < stuck_rate + agent.failure_rate
        else "success"
    )  # fmt: skip
    tokens_in = int(rng.lognormvariate(7.5, 0.8))
    tokens_out = int(tokens_in * rng.uniform(0.05, 0.4))
    context_max = rng.choice((128_000, 200_000, 32_768))
    trigger = triggered_by or _trigger(rng, agent)
    tools = rng.sample(MCP_TOOLS, k=rng.randint(0, 3))
    plan = RunPlan(
        agent=agent,
        triggered_by=trigger,
        message=rng.choice(TASKS).format(n=rng.randint(100, 9999)),
        seconds=seconds,
        outcome=outcome,
        error=rng.choice(ERRORS) if outcome == "failed" else None,
        response=None,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        cost=round((tokens_in * 2.5 + tokens_out * 10) / 1_000_000, 6),
        context_used=min(tokens_in, context_max),
        context_max=context_max,
        tool_calls=tools,
    )
    if outcome == "success":
        plan.response = f"Done: {plan.message.lower()} ({rng.randint(1, 40)} items)"
    share = seconds / max(1, len(agent.steps))
    plan.steps = [_step(rng, name, share * rng.uniform(0.5, 1.0)) for name in agent.steps]
    if depth < 2:
        for callee in agent.calls:
            child = by_name.get((agent.org, callee))
            if child is not None and rng.random() < 0.5:
                plan.children.append(
                    plan_run(
                        rng, child, by_name, triggered_by="agent", depth=depth + 1,
                        stuck_rate=0.0, speed=speed,
                    )
                )  # fmt: skip
    return plan


def count_runs(plan: RunPlan) -> int:
    return 1 + sum(count_runs(child) for child in plan.children)
