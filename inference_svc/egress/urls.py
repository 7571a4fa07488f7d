"""Strict parsing of outbound URLs (image URLs, webhook callbacks).

Different URL parsers disagree on inputs such as ``https://a\\@b/``, ``http://2130706433/`` or
``https://user@host``; an attacker picks the input that one parser reads as an allowed host and
the HTTP client reads as an internal one. This parser accepts only an unambiguous subset
(``scheme://host[:port][/path][?query]``) and refuses everything else, and the result is
cross-checked against yarl, the parser aiohttp dials with.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass, replace

import yarl

from inference_svc.egress.addresses import IPAddress

MAX_URL_LENGTH = 8192

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_PORT = re.compile(r"[0-9]{1,5}")
# Names that reach cloud metadata endpoints or the local network through DNS search domains,
# mDNS or a provider's private zone. They are refused by name, before any lookup, so the
# answer a resolver would give never matters.
_INTERNAL_NAMES = frozenset({"metadata.google.internal", "metadata", "instance-data", "localhost"})
_INTERNAL_SUFFIXES = (".internal", ".local", ".localhost", ".localdomain", ".home.arpa")
# Everything printable in ASCII stays as written (the caller's percent-encoding is kept);
# only non-ASCII characters of the path and query are percent-encoded.
_PATH_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


class ForbiddenUrl(ValueError):  # noqa: N818 - reads as "the URL is forbidden"
    """The URL is refused; the message says why, without echoing the query string."""


@dataclass(frozen=True)
class ImageUrl:
    scheme: str  # "http" or "https"
    host: str  # lower-case ASCII (IDNA), no brackets, no trailing dot
    port: int | None  # as written; None = the scheme's default
    path_query: str  # starts with "/"; the fragment is dropped
    ip: IPAddress | None  # set when the host is an IP literal

    @property
    def effective_port(self) -> int:
        """The port dialled: as written, else the scheme's default."""
        if self.port is not None:
            return self.port
        return 443 if self.scheme == "https" else 80

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def geturl(self) -> str:
        return f"{self.scheme}://{self.authority}{self.path_query}"

    def redacted(self) -> str:
        """The URL without its query, which may carry signatures or tokens (safe to log)."""
        path = self.path_query.split("?", 1)[0]
        return f"{self.scheme}://{self.authority}{path}"

    def to_yarl(self) -> yarl.URL:
        return yarl.URL(self.geturl(), encoded=True)

    def with_authority(self, authority: str) -> ImageUrl:
        """This URL on another host (``host`` or ``host:port``; the port is kept if absent)."""
        host, ip, port = parse_authority(authority)
        return replace(self, host=host, ip=ip, port=self.port if port is None else port)


def parse_image_url(raw: str, *, allow_http: bool) -> ImageUrl:
    """Parse ``raw`` strictly; raise :class:`ForbiddenUrl` for anything outside the subset."""
    if not raw or len(raw) > MAX_URL_LENGTH:
        raise ForbiddenUrl("URL is empty or too long")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in raw):
        raise ForbiddenUrl("URL contains whitespace or control characters")
    if "\\" in raw:
        raise ForbiddenUrl("URL contains a backslash")
    match = _SCHEME.match(raw)
    if match is None:
        raise ForbiddenUrl("URL has no scheme")
    scheme = match.group(1).lower()
    if scheme not in ("http", "https"):
        raise ForbiddenUrl(f"scheme {scheme!r} is not allowed (https only)")
    if scheme == "http" and not allow_http:
        raise ForbiddenUrl("plain http is not allowed (https only)")
    rest = raw[match.end() :]
    if not rest.startswith("//"):
        raise ForbiddenUrl("URL must be of the form scheme://host/path")
    rest = rest[2:].split("#", 1)[0]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path_query = rest[:cut], rest[cut:]
    if "@" in authority:
        raise ForbiddenUrl("URL must not contain user information (user@host)")
    host, ip, port = parse_authority(authority)
    if path_query.startswith("?") or not path_query:
        path_query = "/" + path_query
    path_query = urllib.parse.quote(path_query, safe=_PATH_SAFE)
    url = ImageUrl(scheme=scheme, host=host, port=port, path_query=path_query, ip=ip)
    _cross_check(url)
    return url


def parse_authority(authority: str) -> tuple[str, IPAddress | None, int | None]:
    """``host[:port]`` -> (normalised host, IP if literal, port or None)."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ForbiddenUrl("unterminated IPv6 literal")
        literal, after = authority[1:end], authority[end + 1 :]
        if "%" in literal:
            raise ForbiddenUrl("IPv6 zone identifiers are not allowed")
        try:
            ip6 = ipaddress.IPv6Address(literal)
        except ValueError:
            raise ForbiddenUrl("malformed IPv6 literal") from None
        if after and not after.startswith(":"):
            raise ForbiddenUrl("malformed host")
        return str(ip6), ip6, _parse_port(after[1:]) if after else None
    if authority.count(":") > 1:
        raise ForbiddenUrl("malformed host (IPv6 literals need brackets)")
    host_text, colon, port_text = authority.partition(":")
    port = _parse_port(port_text) if colon else None
    host, ip = _normalise_host(host_text)
    return host, ip, port


def _parse_port(text: str) -> int:
    if not _PORT.fullmatch(text) or not 0 < int(text) < 65536:
        raise ForbiddenUrl("malformed port")
    return int(text)


def _normalise_host(text: str) -> tuple[str, IPAddress | None]:
    if not text:
        raise ForbiddenUrl("URL has no host")
    if "%" in text:
        raise ForbiddenUrl("percent-encoded host")
    host = text.lower()
    written_in_ascii = host.isascii()
    if not written_in_ascii:
        # IDNA applies NFKC, so full-width digits become ASCII ones; the checks below then see
        # the host that will really be dialled.
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise ForbiddenUrl("host is not a valid internationalised domain name") from None
    if host.endswith("."):
        host = host[:-1]
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # As in the WHATWG URL standard, a host whose last label is a number is an IPv4
        # address; only the canonical dotted-quad form is accepted, so 2130706433, 0177.0.0.1,
        # 0x7f.1, 127.1 or full-width digits cannot stand for 127.0.0.1.
        if not written_in_ascii:
            raise ForbiddenUrl("IPv4 address written with non-ASCII characters")
        try:
            ip4 = ipaddress.IPv4Address(host)
        except ValueError:
            raise ForbiddenUrl("IPv4 address not in canonical dotted-quad form") from None
        if str(ip4) != host:
            raise ForbiddenUrl("IPv4 address not in canonical dotted-quad form")
        return host, ip4
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ForbiddenUrl("malformed host name")
    return host, None


def _cross_check(url: ImageUrl) -> None:
    """Refuse the URL unless yarl (what aiohttp dials) reads the same scheme, host and port."""
    try:
        parsed = url.to_yarl()
        same_host = (
            ipaddress.ip_address(parsed.raw_host or "") == url.ip
            if url.ip is not None
            else parsed.raw_host == url.host
        )
        same = (
            same_host
            and parsed.scheme == url.scheme
            and parsed.explicit_port == url.port
            and parsed.raw_user is None
        )
    except ValueError:
        same = False
    if not same:
        raise ForbiddenUrl("URL is ambiguous")


def has_scheme(text: str) -> bool:
    """True when ``text`` starts with ``scheme:`` (an absolute URL, not a relative reference)."""
    return _SCHEME.match(text) is not None


def host_matches(host: str, patterns: tuple[str, ...]) -> bool:
    """Allowlist match: exact host, or ``*.suffix`` for any subdomain of ``suffix``."""
    for pattern in patterns:
        p = pattern.lower().rstrip(".")
        if p.startswith("*."):
            if host.endswith(p[1:]) and len(host) > len(p) - 1:
                return True
        elif host == p:
            return True
    return False


def is_internal_name(host: str) -> bool:
    """True for a host name that only makes sense inside a network: a cloud metadata name, a
    single label (completed by the resolver's search domains), or an internal-only suffix.
    IP literals are left to the address policy."""
    if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]) or ":" in host:
        return False
    return host in _INTERNAL_NAMES or "." not in host or host.endswith(_INTERNAL_SUFFIXES)
