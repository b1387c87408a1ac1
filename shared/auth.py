"""Bearer tokens of DESIGN.md "Access": HS256 with a secret in development, JWKS in production."""

from __future__ import annotations

import asyncio
import functools
import time
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Protocol

import jwt
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError

from shared.events import NAME_PATTERN
from shared.jwks import KeySet, KeysUnavailable, UnknownKey

_JWKS_ALGORITHMS = ["RS256", "ES256", "PS256", "EdDSA"]
#: The algorithms each kind of key (a JWK's `kty`) may verify. A token is verified with the
#: key its `kid` names; the algorithm in its header must suit that key: PyJWT raises a bare
#: TypeError (an HTTP 500) when asked to verify ES256 with an RSA key.
_ALGORITHMS_BY_KEY_TYPE = {"RSA": ["RS256", "PS256"], "EC": ["ES256"], "OKP": ["EdDSA"]}
JWKS_TIMEOUT_S = 10.0


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"
    CLIENT = "client"


def _no_control_characters(text: str) -> str:
    """Refuse what Postgres text cannot hold (NUL, a lone surrogate) and control characters:
    the subject is compared with stored user names and written to audit rows."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        raise ValueError("must not contain control characters or lone surrogates")
    return text


#: A token's subject (a user id): what `sub` may hold.
Subject = Annotated[
    str, Field(min_length=1, max_length=200), AfterValidator(_no_control_characters)
]


class Claims(BaseModel):
    """Who is calling: the subject, their organization and role."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    sub: Subject
    org: Annotated[str, Field(pattern=NAME_PATTERN)]
    role: Role
    exp: int


class AuthError(Exception):
    """The token is missing, malformed, expired, unsigned or signed with the wrong key."""


class AuthUnavailable(Exception):
    """The identity provider's keys cannot be fetched now: the token was not judged at all."""


@lru_cache(maxsize=4)
def _key_set(url: str) -> KeySet:
    # A key fetch runs in a worker thread of its caller; past its timeout it is a failure.
    return KeySet(url, timeout_s=JWKS_TIMEOUT_S)


def _signing_key(url: str, token: str) -> jwt.PyJWK:
    """The provider's key the token's `kid` names. A key set that cannot be fetched or read
    (an outage past the kept keys, an HTML error page, no usable keys) is the provider's
    fault: AuthUnavailable, never a verdict on the token (a 401 would log the user out)."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    if not isinstance(kid, str):  # PyJWT checks a kid given is a string
        raise AuthError("invalid token: no key id (kid) in its header")
    try:
        return _key_set(url).key(kid)
    except jwt.PyJWTError as exc:  # the URL itself refused (not http or https)
        raise AuthUnavailable(f"signing keys unavailable: {exc}") from None
    except KeysUnavailable as exc:
        raise AuthUnavailable(f"signing keys unavailable: {exc}") from None
    except UnknownKey as exc:
        raise AuthError(f"invalid token: {exc}") from None


def decode_token(
    token: str,
    *,
    secret: str,
    jwks_url: str | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    leeway_s: float = 0.0,
) -> Claims:
    """Verify signature, algorithm and expiry, and the audience and issuer where configured
    (an identity provider shared with other applications signs their tokens with the same
    keys); return the claims or raise AuthError."""
    require = ["exp", "sub"] + (["aud"] if audience else []) + (["iss"] if issuer else [])
    # Without a configured audience, a token that names one is refused (PyJWT's default).
    options = {"require": require}
    try:
        if jwks_url:
            signing_key = _signing_key(jwks_url, token)
            suited = _ALGORITHMS_BY_KEY_TYPE.get(signing_key.key_type or "", [])
            payload = jwt.decode(
                token,
                signing_key.key,
                algorithms=[a for a in _JWKS_ALGORITHMS if a in suited],
                options=options,  # type: ignore[arg-type]
                audience=audience,
                issuer=issuer,
                leeway=leeway_s,
            )
        else:
            payload = jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                options=options,  # type: ignore[arg-type]
                audience=audience,
                issuer=issuer,
                leeway=leeway_s,
            )
    except jwt.PyJWKClientConnectionError as exc:
        raise AuthUnavailable(f"signing keys unavailable: {exc}") from None
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    try:
        return Claims.model_validate(payload)
    except ValidationError as exc:
        fields = ", ".join(str(e["loc"][0]) for e in exc.errors() if e["loc"])
        raise AuthError(f"invalid token claims: {fields or 'payload'}") from None


class TokenSettings(Protocol):
    """What verifying a token needs from a service's settings (shared.settings)."""

    @property
    def jwt_secret(self) -> SecretStr: ...
    @property
    def jwks_url(self) -> str | None: ...
    @property
    def jwt_audience(self) -> str | None: ...
    @property
    def jwt_issuer(self) -> str | None: ...
    @property
    def jwt_leeway_s(self) -> float: ...


async def verify_token(token: str, settings: TokenSettings) -> Claims:
    """`decode_token` with a service's settings. With JWKS, in a worker thread: fetching the
    provider's keys blocks, and the event loop serves every other request and socket."""
    decode = functools.partial(
        decode_token,
        secret=settings.jwt_secret.get_secret_value(),
        jwks_url=settings.jwks_url,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        leeway_s=settings.jwt_leeway_s,
    )
    if settings.jwks_url:
        return await asyncio.to_thread(decode, token)
    return decode(token)


def mint_token(*, secret: str, org: str, user: str, role: Role | str, ttl_s: int = 86_400) -> str:
    """A development HS256 token (what `fleetwatch token` prints)."""
    claims = Claims(sub=user, org=org, role=Role(role), exp=int(time.time()) + ttl_s)
    return jwt.encode(claims.model_dump(mode="json"), secret, algorithm="HS256")
