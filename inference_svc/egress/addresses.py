"""Which IP addresses an outbound request (an image download, a webhook delivery) may
connect to.

Python's ``ipaddress.is_global`` has had gaps across versions (IPv4-mapped, NAT64, 6to4,
192.0.0.0/24), so an address must pass both it and an explicit deny list, and any IPv4 address
embedded in an IPv6 one is checked as well.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DENIED_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host on Linux
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT; also Alibaba's metadata 100.100.100.200
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local: cloud metadata 169.254.169.254, ECS 169.254.170.2
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF assignments; Oracle metadata 192.0.0.192
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",  # includes 255.255.255.255
    )
)

_DENIED_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # unspecified, loopback and deprecated IPv4-compatible addresses
        "::ffff:0:0/96",  # IPv4-mapped: the socket would dial the IPv4 address
        "::ffff:0:0:0/96",  # IPv4-translated
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",
        "2001::/23",  # IETF assignments, Teredo (2001::/32) included
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
        "fc00::/7",  # unique local; AWS IPv6 metadata fd00:ec2::254
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a NAT64 or 6to4 IPv6 address leads to, if any."""
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:
        return ip.sixtofour
    return None


def is_public_address(ip: IPAddress) -> bool:
    """True when ``ip`` is a globally routable unicast address (nothing internal)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return False
        if any(ip in net for net in _DENIED_V6):
            return False
        if ip in _NAT64:
            # Python counts 64:ff9b::/96 as reserved (inside ::/8); the translator dials the
            # embedded IPv4 address, so that is what decides.
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        inner = embedded_ipv4(ip)
        if inner is not None and not is_public_address(inner):
            return False
    elif any(ip in net for net in _DENIED_V4):
        return False
    return ip.is_global and not (
        ip.is_multicast or ip.is_private or ip.is_reserved or ip.is_loopback or ip.is_link_local
    )


@dataclass(frozen=True)
class Allowance:
    """A non-public network a fetch may dial anyway; ``port`` pins it to one port."""

    network: IPNetwork
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Allowance:
        """``CIDR``, ``CIDR:port`` or ``[v6CIDR]:port`` (a bare address is a /32 or /128)."""
        body, port = text.strip(), None
        if body.startswith("["):
            end = body.find("]")
            if end < 0 or not body[end + 1 :].startswith(":"):
                raise ValueError(f"allowed network {text!r}: write [address]:port")
            body, port = body[1:end], _port(body[end + 2 :], text)
        elif body.count(":") == 1:
            body, _, port_text = body.partition(":")
            port = _port(port_text, text)
        return cls(ipaddress.ip_network(body, strict=False), port)

    def admits(self, ip: IPAddress, port: int, origin_port: int | None) -> bool:
        """``origin_port``: the port of the request's own URL; an allowance without a port
        admits only that one, so a redirect cannot move to another service on the host."""
        if ip.version != self.network.version or ip not in self.network:
            return False
        if self.port is not None:
            return port == self.port
        return origin_port is None or port == origin_port


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"allowed network {entry!r}: malformed port")
    return int(text)


@dataclass(frozen=True)
class AddressPolicy:
    """Addresses a fetch may dial: public ones, plus any explicitly allowed networks."""

    allow_private: bool = False
    allowances: tuple[Allowance, ...] = ()

    @classmethod
    def build(cls, allow_private: bool, allowed_networks: Iterable[str]) -> AddressPolicy:
        return cls(allow_private, tuple(Allowance.parse(n) for n in allowed_networks))

    def allows(self, ip: IPAddress, port: int, origin_port: int | None = None) -> bool:
        """May ``ip:port`` be dialled? ``origin_port`` is set for a redirect hop (see
        :meth:`Allowance.admits`); None for the request's own URL."""
        if self.allow_private or is_public_address(ip):
            return True
        return any(a.admits(ip, port, origin_port) for a in self.allowances)

    def allows_text(self, address: str, port: int, origin_port: int | None = None) -> bool:
        """Like :meth:`allows` for an address string; anything unparsable is refused."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return self.allows(ip, port, origin_port)
