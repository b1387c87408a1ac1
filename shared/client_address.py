"""Who the client is behind trusted proxies: the connection's peer, or the address the last
trusted proxy put in `X-Forwarded-For` (FLEETWATCH_TRUSTED_PROXIES; pure)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_trusted_proxies(text: str) -> tuple[Network, ...]:
    """`10.0.0.0/8, 127.0.0.1, fd00::/8` as networks (a bare address is a /32 or /128); an
    entry that is neither, or a network with host bits set, raises ValueError naming it."""
    networks: list[Network] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            raise ValueError(
                f"{entry!r} is not an IP address or CIDR network ({exc}); "
                "expected a comma-separated list such as 10.0.0.0/8,127.0.0.1"
            ) from None
    return tuple(networks)


def _host(text: str) -> str:
    """The address part of an entry some proxies write with a port: `203.0.113.7:4711`,
    `[2001:db8::1]:443` (a bare IPv6 address has more than one colon and stays as it is)."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else text
    host, colon, port = text.rpartition(":")
    if colon and ":" not in host and port.isdigit():
        return host
    return text


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(_host(text))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; the networks say a.b.c.d.
        return address.ipv4_mapped
    return address


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def _entries(forwarded_for: Iterable[str]) -> list[str]:
    # Several header lines are one list, in order; empty list elements mean nothing.
    return [e.strip() for value in forwarded_for for e in value.split(",") if e.strip()]


def client_address(
    peer: str | None, forwarded_for: Iterable[str], trusted: Sequence[Network]
) -> str | None:
    """The client's address: `peer` itself unless it is a trusted proxy; else, walking the
    `X-Forwarded-For` values (every header line, in order) from the right past trusted
    proxies, the first address that is not one: the rightmost that a trusted proxy appended
    (anything left of it the client may have written itself). A malformed entry stops the
    walk at the last trusted hop; when every hop is trusted, the leftmost is the client."""
    if peer is None or not trusted:
        return peer
    found = _address(peer)
    if found is None or not _trusted(found, trusted):
        return peer
    client = peer
    for entry in reversed(_entries(forwarded_for)):
        hop = _address(entry)
        if hop is None:
            return client
        client = str(hop)
        if not _trusted(hop, trusted):
            return client
    return client
