"""A real identity provider's key endpoint for tests: an HTTP server serving a JWKS.

It signs RS256 tokens with its private key; `delay_s` holds each key request that long, and
`stop()` makes the endpoint unreachable (an identity provider outage).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from shared.jwks import KeySet


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Jwks:
    def __init__(self, kid: str = "k1") -> None:
        self.kid = kid
        self.key = new_key()
        self.delay_s = 0.0
        self.requests = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"

    def token(
        self,
        claims: dict[str, Any],
        *,
        key: rsa.RSAPrivateKey | None = None,
        kid: str | None = None,
    ) -> str:
        """An RS256 token; another `key` or `kid` makes one the provider did not sign."""
        return jwt.encode(
            {"exp": int(time.time()) + 3600, **claims},
            key or self.key,
            algorithm="RS256",
            headers={"kid": kid or self.kid},
        )

    def _body(self) -> bytes:
        public = orjson.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return orjson.dumps({"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]})

    def start(self) -> None:
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.requests += 1
                time.sleep(jwks.delay_s)
                body = jwks._body()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the slow-provider tests): not an error

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@contextmanager
def serving(kid: str = "k1") -> Iterator[Jwks]:
    jwks = Jwks(kid)
    jwks.start()
    try:
        yield jwks
    finally:
        jwks.stop()


def age_key_set(keys: KeySet, seconds: float) -> None:
    """As if `keys` had been fetched `seconds` earlier (and no fetch had failed since)."""
    held = keys._held
    assert held.fetched_at is not None
    keys._held = dataclasses.replace(held, fetched_at=held.fetched_at - seconds, failed_at=None)
