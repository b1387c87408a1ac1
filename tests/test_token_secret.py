"""A public or short HS256 secret guards loopback only (pure logic; the CLI run is below)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from shared.settings import DEFAULT_JWT_SECRET, CommonSettings
from shared.token_secret import check_token_secret, is_loopback, weak_secret

STRONG = "0123456789abcdef0123456789abcdef-strong"


def _settings(secret: str, **extra: object) -> CommonSettings:
    return CommonSettings(jwt_secret=SecretStr(secret), **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("secret", "weak"),
    [
        (DEFAULT_JWT_SECRET, True),
        ("change-me", True),
        ("fleetwatch-dev-secret-change-me", True),
        ("a-long-secret-that-still-says-CHANGE-ME-xxxxxxxxx", True),
        ("short-but-random-7f3a", True),
        (STRONG, False),
    ],
)
def test_public_and_short_secrets_are_weak(secret: str, weak: bool) -> None:
    assert (weak_secret(_settings(secret)) is not None) is weak
    # With a JWKS URL the HS256 secret verifies nothing.
    assert weak_secret(_settings(secret, jwks_url="https://idp.example/jwks")) is None


def test_loopback_addresses() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.9", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.5", "example.com"]))


def test_weak_secret_warns_on_loopback_and_refuses_elsewhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    weak = _settings("change-me")
    check_token_secret(weak, "127.0.0.1", "query API")
    assert "placeholder" in caplog.text
    with pytest.raises(SystemExit, match=r"listens on 0\.0\.0\.0"):
        check_token_secret(weak, "0.0.0.0", "query API")
    check_token_secret(_settings("change-me", allow_weak_secret=True), "0.0.0.0", "query API")
    check_token_secret(_settings(STRONG), "0.0.0.0", "query API")


@pytest.mark.parametrize("service", ["query", "notifier"])
def test_the_service_will_not_listen_publicly_on_the_default_secret(service: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_JWT")}
    env.pop("FLEETWATCH_JWKS_URL", None)
    env.pop("FLEETWATCH_ALLOW_WEAK_SECRET", None)
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", service, "--host", "0.0.0.0", "--port", "1"],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "FLEETWATCH_JWT_SECRET is a placeholder" in done.stderr, done.stderr


def test_signing_keys_over_plain_http_from_another_host_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for url, warned in [
        ("http://idp.internal/.well-known/jwks.json", True),
        ("HTTP://10.0.0.5:8080/jwks", True),
        ("https://idp.example.com/.well-known/jwks.json", False),
        ("http://127.0.0.1:9000/jwks", False),
        ("http://localhost/jwks", False),
    ]:
        caplog.clear()
        settings = CommonSettings(jwks_url=url)
        check_token_secret(settings, "0.0.0.0", "query API")
        found = [r.getMessage() for r in caplog.records if "plain http" in r.getMessage()]
        assert bool(found) is warned, (url, found)
