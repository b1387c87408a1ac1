"""Common settings an operator gets wrong: each is refused at start, naming the variable,
instead of a traceback later or a silently different behaviour."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from shared.auth import decode_token, mint_token
from shared.settings import CommonSettings

SECRET = "fleetwatch-test-secret-0123456789abcdef"


def settings(**values: str) -> CommonSettings:
    """Settings from these environment variables (by name) alone."""
    return CommonSettings.model_validate(values)


def fleetwatch(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


@pytest.mark.parametrize("prefix", ["fleet.x", "fleet events", "", "f>", "a" * 65])
def test_a_subject_prefix_no_subject_can_hold_is_a_setting_error(prefix: str) -> None:
    with pytest.raises(ValidationError, match="FLEETWATCH_SUBJECT_PREFIX"):
        settings(FLEETWATCH_SUBJECT_PREFIX=prefix)


def test_a_service_started_with_a_bad_prefix_says_so_in_one_line() -> None:
    # ingest reads the prefix before it binds a port or reaches NATS.
    done = fleetwatch("ingest", FLEETWATCH_SUBJECT_PREFIX="fleet.x", NATS_URL="nats://127.0.0.1:1")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "invalid setting: FLEETWATCH_SUBJECT_PREFIX" in done.stderr


@pytest.mark.parametrize("days", ["0", "-1", "1e9"])
def test_a_stream_retention_jetstream_would_misread_is_refused(days: str) -> None:
    # 0 is "keep forever" to JetStream; a negative or huge one fails at stream creation with
    # a message about something else ("duplicates window", "invalid JSON").
    with pytest.raises(ValidationError, match="FLEETWATCH_RETENTION_DAYS"):
        settings(FLEETWATCH_RETENTION_DAYS=days)


@pytest.mark.parametrize("replicas", ["6", "-1"])
def test_stream_replicas_outside_what_jetstream_takes_are_refused(replicas: str) -> None:
    with pytest.raises(ValidationError, match="FLEETWATCH_STREAM_REPLICAS"):
        settings(FLEETWATCH_STREAM_REPLICAS=replicas)


def test_sensible_stream_limits_are_kept() -> None:
    found = settings(FLEETWATCH_RETENTION_DAYS="0.5", FLEETWATCH_STREAM_REPLICAS="3")
    assert (found.stream_max_age_days, found.stream_replicas) == (0.5, 3)


@pytest.mark.parametrize("name", ["FLEETWATCH_JWT_AUDIENCE", "FLEETWATCH_JWT_ISSUER"])
def test_an_empty_audience_or_issuer_means_unset_not_everyone_refused(name: str) -> None:
    # `FLEETWATCH_JWT_AUDIENCE=` is what a template renders for "not set".
    found = settings(**{name: "", "FLEETWATCH_JWT_SECRET": SECRET})
    token = mint_token(secret=SECRET, org="acme", user="ann", role="admin")
    claims = decode_token(
        token,
        secret=SECRET,
        jwks_url=found.jwks_url,
        audience=found.jwt_audience,
        issuer=found.jwt_issuer,
    )
    assert claims.sub == "ann"


def test_an_empty_jwks_url_means_unset() -> None:
    assert settings(FLEETWATCH_JWKS_URL=" ").jwks_url is None
