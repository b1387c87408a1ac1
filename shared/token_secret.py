"""Refuse to guard a reachable service with an HS256 secret anyone can read.

With no JWKS URL, query and notifier verify tokens with `FLEETWATCH_JWT_SECRET`. Its default,
and the values in this repository's manifests, are public: with one of them anybody can mint
an admin token for any org. Bound to loopback (`make run`, tests) such a secret only warns;
on any other address the service will not start unless `FLEETWATCH_ALLOW_WEAK_SECRET=1` says
the risk is understood (a throwaway development cluster).
"""

from __future__ import annotations

import ipaddress
import logging
from urllib.parse import urlsplit

from shared.settings import DEFAULT_JWT_SECRET, CommonSettings

log = logging.getLogger(__name__)

#: Secrets published with fleetwatch (settings default, Kubernetes base and dev overlay).
PUBLIC_SECRETS = frozenset({DEFAULT_JWT_SECRET, "change-me", "fleetwatch-dev-secret-change-me"})
#: RFC 7518 asks HS256 keys to be at least as long as the hash: 256 bits.
MIN_SECRET_BYTES = 32


def weak_secret(settings: CommonSettings) -> str | None:
    """Why the HS256 secret must not guard a reachable service (None: it may, or JWKS is used)."""
    if settings.jwks_url:
        return None
    secret = settings.jwt_secret.get_secret_value()
    if secret in PUBLIC_SECRETS or "change-me" in secret.lower():
        return "is a placeholder published with fleetwatch"
    if len(secret.encode()) < MIN_SECRET_BYTES:
        return f"is shorter than {MIN_SECRET_BYTES} bytes"
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_keys(jwks_url: str | None) -> bool:
    """Whether signing keys come over plain HTTP from another machine: anyone on the path
    could hand the service keys of their own, and sign any token with them."""
    if not jwks_url or urlsplit(jwks_url).scheme.lower() != "http":
        return False
    return not is_loopback(urlsplit(jwks_url).hostname or "")


def check_token_secret(settings: CommonSettings, host: str, service: str) -> None:
    """Warn about a weak secret on loopback; refuse (SystemExit) on any other address. Warn
    about signing keys fetched over plain HTTP."""
    if plain_http_keys(settings.jwks_url):
        log.warning(
            "FLEETWATCH_JWKS_URL is plain http from another host: whoever can alter that "
            "traffic can sign tokens this %s accepts; use https",
            service,
        )
    reason = weak_secret(settings)
    if reason is None:
        return
    problem = f"FLEETWATCH_JWT_SECRET {reason}: anyone can sign tokens this {service} accepts"
    if is_loopback(host):
        log.warning("%s (acceptable only because it listens on %s)", problem, host)
        return
    if settings.allow_weak_secret:
        log.warning("%s; listening on %s as FLEETWATCH_ALLOW_WEAK_SECRET allows", problem, host)
        return
    raise SystemExit(
        f"{service}: {problem}, and it listens on {host}. Set a random secret "
        "(openssl rand -hex 32) or FLEETWATCH_JWKS_URL; FLEETWATCH_ALLOW_WEAK_SECRET=1 starts "
        "it anyway (a throwaway development setup only)."
    )
