"""Where a webhook may be delivered: URL syntax, address classification, the operator's allow-list.

A webhook URL is chosen by the tenant but fetched by the service, from inside its network: without
a guard it would reach the cloud metadata endpoint (169.254.169.254), the database, or anything
else listening on a private or loopback address (server-side request forgery). So the host's
addresses are checked at submit *and* again at each delivery, where the delivery then connects to
the address it checked (a name re-resolved between check and connect could point elsewhere: DNS
rebinding; service/webhook_delivery.py). ``GIF_WEBHOOK_ALLOWED_HOSTS`` lets the operator open
named hosts or address ranges (a receiver on the same private network, tests on loopback).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import DomainError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``resolve(host, port)`` → the host's addresses (``socket.getaddrinfo`` by default; tests inject one).
Resolver = Callable[[str, int], list[IPAddress]]

MAX_URL_LENGTH = 2048
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class InvalidWebhook(DomainError):
    """The webhook URL is not an absolute http(s) URL the service can deliver to."""

    code, status, title = "invalid-webhook", 422, "Invalid webhook"


class WebhookTargetForbidden(DomainError):
    """The webhook's host is (or resolves to) an address the service must not contact."""

    code, status, title = "webhook-target-forbidden", 422, "Webhook target forbidden"


@dataclass(frozen=True)
class Target:
    """A parsed webhook URL: ``host`` is lower-case ASCII (IDNA) without brackets."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, at least "/"

    def url_for(self, address: IPAddress) -> str:
        """The URL with the host replaced by ``address`` (what is connected to)."""
        literal = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{literal}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        """The ``Host`` header the receiver expects (the port only when not the scheme's default)."""
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


def parse(url: str) -> Target:
    """Parse a webhook URL.

    Raises:
        InvalidWebhook: not http(s), no host, credentials in it, a bad port, too long.
    """
    if len(url) > MAX_URL_LENGTH:
        raise _invalid(f"the webhook URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise _invalid(f"the webhook URL does not parse: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise _invalid("the webhook URL must start with https:// (or http://)")
    if not parts.hostname:
        raise _invalid("the webhook URL names no host")
    if parts.username is not None or parts.password is not None:
        raise _invalid("the webhook URL must not carry credentials (verify the signature instead)")
    try:
        host = parts.hostname.rstrip(".").encode("idna").decode("ascii").lower()  # "a.b." is "a.b"
    except UnicodeError:
        raise _invalid(f"the webhook URL's host {parts.hostname!r} is not a valid host name") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path)


def _invalid(message: str) -> InvalidWebhook:
    return InvalidWebhook(
        message, errors=[{"loc": ["body", "webhook", "url"], "msg": message, "type": "invalid_webhook"}]
    )


def forbidden_reason(address: IPAddress) -> str | None:
    """Why the service must not connect to ``address`` (None: a public address)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or (
            ipaddress.IPv4Address(int(address) & 0xFFFFFFFF) if address in _NAT64 else None
        )
        if embedded is not None:
            return forbidden_reason(embedded)
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local (cloud metadata)", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("not globally routable", not address.is_global),
    )
    return next((reason for reason, hit in checks if hit), None)


@dataclass(frozen=True)
class AllowList:
    """``GIF_WEBHOOK_ALLOWED_HOSTS``: host names (exact, case-insensitive) and address ranges."""

    names: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, value: str) -> AllowList:
        """Raises ValueError for an entry that looks like an address range but is not one."""
        names, networks = set(), []
        for entry in (item.strip() for item in value.split(",")):
            if not entry:
                continue
            if "/" in entry or _is_address(entry):
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError as exc:
                    raise ValueError(
                        f"GIF_WEBHOOK_ALLOWED_HOSTS: {entry!r} is not an address range: {exc}"
                    ) from None
            else:
                names.add(entry.lower().rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def admits(self, host: str, address: IPAddress) -> bool:
        """Whether the operator opened ``host`` by name or ``address`` by range."""
        return host in self.names or any(address in net for net in self.networks)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The host's addresses as this machine resolves them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def checked_addresses(
    target: Target, allow: AllowList, resolve: Resolver = system_resolver
) -> list[IPAddress]:
    """The addresses of ``target``'s host, every one of them allowed.

    One forbidden address refuses the whole host: a name that resolves to a public and a private
    address could be answered with either at connect time.

    Raises:
        InvalidWebhook: the host does not resolve.
        WebhookTargetForbidden: an address is loopback, private, link-local, reserved, … and not
            allowed by ``GIF_WEBHOOK_ALLOWED_HOSTS``.
    """
    try:
        literal = _is_address(target.host)
        addresses = [ipaddress.ip_address(target.host)] if literal else resolve(target.host, target.port)
    except (OSError, UnicodeError) as exc:
        raise _invalid(f"the webhook host {target.host!r} does not resolve ({exc})") from None
    if not addresses:
        raise _invalid(f"the webhook host {target.host!r} has no address")
    for address in addresses:
        reason = forbidden_reason(address)
        if reason is not None and not allow.admits(target.host, address):
            message = (
                f"the webhook host {target.host!r} resolves to {address}, a {reason} address; the service "
                "does not call such addresses unless the operator allows them (GIF_WEBHOOK_ALLOWED_HOSTS)"
            )
            raise WebhookTargetForbidden(
                message,
                errors=[
                    {"loc": ["body", "webhook", "url"], "msg": message, "type": "webhook_target_forbidden"}
                ],
            )
    return addresses


def check_url(url: str, allow: AllowList, resolve: Resolver = system_resolver) -> Target:
    """Parse and check a webhook URL (at submit); raises as :func:`parse` and :func:`checked_addresses`."""
    target = parse(url)
    checked_addresses(target, allow, resolve)
    return target
