"""SSRF guard for every URL the gateway fetches or calls on a client's behalf.

Clients hand us URLs — ``webhook_url`` to be called when a job ends, ``image``
reference URLs to be downloaded. Without a guard such a URL can make the
gateway talk to itself or its neighbours: Redis, the cloud metadata service at
169.254.169.254, admin ports on the private network. This module refuses that
twice:

At submit time, :func:`check_url`
    Accepts only an absolute ``https`` URL (``http`` when the operator's
    :class:`NetPolicy` allows it) with a host, no ``user:pass@``, a port in
    1..65535, at most :data:`MAX_URL_LENGTH` characters and no whitespace,
    control characters or backslashes. The URL is normalised the way
    ``requests`` will send it (IDNA, percent-decoded host, lower case), and
    the host is judged on that form, so ``https://a%2eb/`` and full-width
    digits are seen as what they really are. Non-standard IPv4 spellings
    (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``) are refused
    outright, as are ``localhost``, ``*.localhost`` and single-label names.
    Then the name is resolved and refused if *any* address is not public.
    Failures raise :class:`~shared.errors.InvalidRequest` with
    ``code="unsafe_url"`` and the caller's ``param``.

At connection time, :func:`safe_session`
    DNS can change between submit and delivery (DNS rebinding), so every
    request made through the session repeats the URL checks, resolves the
    host once, refuses (:class:`UnsafeDestination`) unless every address is
    public, and then connects to the address it checked — never to the name,
    so there is no second lookup an attacker could answer differently. TLS
    still uses the original host name for SNI and certificate verification,
    and the ``Host`` header names the original host. Redirects are never
    followed: a 3xx is returned to the caller as it is. Proxies (from the
    environment or passed in) are not used, since a proxy would resolve the
    name itself.

Refused address classes (:func:`is_public_address`)
    IPv4: 0.0.0.0/8, private 10/8, 172.16/12, 192.168/16, loopback 127/8,
    link-local 169.254/16 (cloud metadata), carrier-grade NAT 100.64/10,
    IETF 192.0.0/24, documentation 192.0.2/24, 198.51.100/24, 203.0.113/24,
    benchmarking 198.18/15, 6to4 relay 192.88.99/24, multicast 224/4,
    reserved 240/4 and broadcast. IPv6: anything outside global unicast
    2000::/3 (so ::, ::1, fc00::/7, fe80::/10, fec0::/10, ff00::/8, 5f00::/16),
    IETF 2001::/23, documentation 2001:db8::/32 and 3fff::/20, NAT64
    local-use 64:ff9b:1::/48, IPv4-compatible ::/96, scoped addresses.
    IPv6 forms that embed an IPv4 address — IPv4-mapped ::ffff:0:0/96, NAT64
    64:ff9b::/96, 6to4 2002::/16, Teredo 2001::/32 — are unwrapped and
    judged by the IPv4 they carry. On top of these explicit lists an address
    must be ``is_global`` by :mod:`ipaddress`.

``NetPolicy.allowed_hosts`` is the operator's allow-list of internal hosts
(names or IP literals, optionally ``host:port``); they skip the address checks
but not the scheme and URL-shape checks.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import socket
import unicodedata
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.models import PreparedRequest
from requests.utils import select_proxy
from urllib3.connectionpool import HTTPConnectionPool

from shared.errors import InvalidRequest
from shared.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}

_V4_BLOCKED: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), label)
    for net, label in (
        ("0.0.0.0/8", "in the 'this network' range 0.0.0.0/8"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a carrier-grade NAT address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address (cloud metadata lives here)"),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "an IETF protocol assignment address"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a 6to4 relay anycast address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "a reserved address"),
    )
)
_V6_BLOCKED: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), label)
    for net, label in (
        ("::/128", "the unspecified address"),
        ("::1/128", "a loopback address"),
        ("::/96", "an IPv4-compatible IPv6 address (deprecated)"),
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("2001::/23", "an IETF protocol assignment address"),
        ("2001:db8::/32", "a documentation address"),
        ("3fff::/20", "a documentation address"),
        ("fc00::/7", "a unique local (private) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    )
)
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

# WHATWG URL parsing treats a host whose last label is a number as IPv4, and so
# does the C resolver (inet_aton): "2130706433", "0x7f000001", "0177.0.0.1".
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")


class UnsafeDestination(Exception):
    """A request through :func:`safe_session` was refused before connecting."""


@dataclasses.dataclass(frozen=True)
class NetPolicy:
    """What the operator allows beyond public https destinations."""

    allow_http: bool = False
    allowed_hosts: frozenset[str] = frozenset()


class _Refused(Exception):
    """Internal: why a URL or address was refused (a sentence fragment)."""


@dataclasses.dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # lower case, IDNA, no brackets
    port: int  # effective port
    explicit_port: bool
    address: IPAddress | None  # set when the host is an IP literal
    allowed: bool
    url: str  # normalised

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.explicit_port and self.port != _DEFAULT_PORTS[self.scheme]:
            return f"{host}:{self.port}"
        return host


# -- addresses ---------------------------------------------------------------


def _non_public_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public destination, or ``None`` if it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "a scoped IPv6 address"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            reason = _non_public_reason(embedded)
            return f"{reason}, embedded in an IPv6 address" if reason else None
        if ip.teredo is not None:
            server, client = ip.teredo
            reason = _non_public_reason(client) or _non_public_reason(server)
            return f"{reason}, embedded in a Teredo address" if reason else None
        for net, label in _V6_BLOCKED:
            if ip in net:
                return label
        if ip not in _V6_GLOBAL_UNICAST:
            return "outside IPv6 global unicast space"
    else:
        for net4, label in _V4_BLOCKED:
            if ip in net4:
                return label
    if ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local:
        return "a special-purpose address"
    if not ip.is_global:
        return "not a globally routable address"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, NAT64 or 6to4 address carries."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def is_public_address(ip: IPAddress) -> bool:
    """True when ``ip`` is a globally routable unicast address (see module doc)."""
    return _non_public_reason(ip) is None


def _resolve(host: str, port: int) -> list[IPAddress]:
    """All addresses of ``host`` from one ``getaddrinfo`` call, in its order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise _Refused(f"the host {host!r} could not be resolved") from exc
    addresses: list[IPAddress] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            address = ipaddress.ip_address(sockaddr[0])
        except ValueError as exc:
            raise _Refused(f"the host {host!r} resolved to an unusable address") from exc
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise _Refused(f"the host {host!r} has no usable address")
    return addresses


def _refuse_non_public(host: str, addresses: list[IPAddress]) -> None:
    for address in addresses:
        reason = _non_public_reason(address)
        if reason is not None:
            # The address itself is not named: it may describe our network.
            raise _Refused(f"the host {host!r} resolves to {reason}; only public hosts are allowed")


# -- URLs --------------------------------------------------------------------


def _is_allowed(policy: NetPolicy, host: str, address: IPAddress | None, port: int) -> bool:
    for entry in policy.allowed_hosts:
        entry_host, entry_port = _split_allow_entry(entry.strip().lower())
        if entry_port is not None and entry_port != port:
            continue
        if address is not None:
            try:
                if ipaddress.ip_address(entry_host) == address:
                    return True
            except ValueError:
                continue
        elif entry_host.rstrip(".") == host.rstrip("."):
            return True
    return False


def _split_allow_entry(entry: str) -> tuple[str, int | None]:
    """``"host"``, ``"host:port"``, ``"::1"``, ``"[::1]"`` or ``"[::1]:port"``."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if port.isdigit():
            return host, int(port)
    return entry, None


def _looks_numeric_ipv4(host: str) -> bool:
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    return bool(_NUMERIC_LABEL.fullmatch(labels[-1]))


def _inspect(url: object, policy: NetPolicy) -> _Target:
    """Check everything about ``url`` that needs no DNS; raise :class:`_Refused`."""
    if not isinstance(url, str) or not url:
        raise _Refused("the URL must be a non-empty string")
    return _inspect_text(url, policy)


# A pure function of its arguments; a guarded request inspects its URL twice
# (connection, Host header). Refusals are raised anew each time (not cached).
@functools.lru_cache(maxsize=512)
def _inspect_text(url: str, policy: NetPolicy) -> _Target:
    if len(url) > MAX_URL_LENGTH:
        raise _Refused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in url):
        raise _Refused("the URL contains whitespace or control characters")
    if "\\" in url:
        raise _Refused("the URL contains a backslash")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _Refused(f"the URL is malformed ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise _Refused("the URL must be an absolute https URL")
    if scheme == "http" and not policy.allow_http:
        raise _Refused("the URL must use https")
    if not parts.netloc or not parts.hostname:
        raise _Refused("the URL has no host")
    if "@" in parts.netloc:
        raise _Refused("the URL must not contain credentials (user:pass@)")
    if port is not None and not 1 <= port <= 65535:
        raise _Refused("the URL's port must be in 1..65535")

    # Judge the host the way requests will send it (IDNA, %-decoding, case).
    prepared = PreparedRequest()
    try:
        prepared.prepare_url(url, None)
        parts = urlsplit(prepared.url or "")
        port = parts.port
    except (requests.RequestException, ValueError) as exc:
        raise _Refused("the URL is not valid") from exc
    host = parts.hostname or ""
    if not host:
        raise _Refused("the URL has no host")
    if "%" in host or "@" in parts.netloc:
        raise _Refused("the URL's host is malformed")

    address: IPAddress | None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
        if _looks_numeric_ipv4(host):
            raise _Refused(
                "the URL's host is a non-standard IPv4 form; write addresses as a.b.c.d"
            ) from None
    effective_port = port if port is not None else _DEFAULT_PORTS[scheme]
    allowed = _is_allowed(policy, host, address, effective_port)
    if not allowed:
        if address is not None:
            reason = _non_public_reason(address)
            if reason is not None:
                raise _Refused(f"the host {host} is {reason}; only public hosts are allowed")
        else:
            name = host.rstrip(".")
            if name == "localhost" or name.endswith(".localhost"):
                raise _Refused(f"the host {host!r} is a local host name")
            if "." not in name:
                raise _Refused(f"the host {host!r} is not a fully qualified domain name")
    target = _Target(
        scheme=scheme,
        host=host,
        port=effective_port,
        explicit_port=port is not None,
        address=address,
        allowed=allowed,
        url="",
    )
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    return dataclasses.replace(target, url=f"{scheme}://{target.netloc}{path}{query}")


def check_url(url: str, policy: NetPolicy, *, param: str, resolve: bool = True) -> str:
    """Validate a client-supplied URL at submit time; return it normalised.

    Normalised: scheme and host in lower case, host IDNA-encoded, default
    port dropped, empty path as ``/``, fragment dropped (it is never sent).
    Raises :class:`InvalidRequest` (``param=param``, ``code="unsafe_url"``).
    """
    try:
        target = _inspect(url, policy)
        if resolve and target.address is None and not target.allowed:
            _refuse_non_public(target.host, _resolve(target.host, target.port))
    except _Refused as exc:
        raise InvalidRequest(f"Invalid {param}: {exc}.", param=param, code="unsafe_url") from None
    return target.url


# -- connection time ---------------------------------------------------------


def _pinned_target(url: str, policy: NetPolicy) -> tuple[_Target, IPAddress]:
    """The checked target of ``url`` and the one address to connect to."""
    try:
        target = _inspect(url, policy)
        if target.address is not None:
            return target, target.address
        addresses = _resolve(target.host, target.port)
        if not target.allowed:
            _refuse_non_public(target.host, addresses)
    except _Refused as exc:
        raise UnsafeDestination(f"refused: {exc}") from None  # no URL: it may hold secrets
    return target, addresses[0]


class _PinnedAdapter(HTTPAdapter):
    """Connects to the address it checked, with SNI and Host of the URL's host."""

    def __init__(self, policy: NetPolicy, **kwargs: Any) -> None:
        self._policy = policy
        super().__init__(**kwargs)

    def get_connection_with_tls_context(
        self,
        request: PreparedRequest,
        verify: bool | str | None,
        proxies: Mapping[str, str] | None = None,
        cert: str | tuple[str, str] | None = None,
    ) -> HTTPConnectionPool:
        url = request.url or ""
        if select_proxy(url, dict(proxies or {})):
            raise UnsafeDestination("proxies are not supported for guarded requests")
        target, address = _pinned_target(url, self._policy)
        _host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        pool_kwargs = dict(pool_kwargs)
        if target.scheme == "https":
            # SNI and certificate verification against the name, not the IP.
            # (Not assert_hostname: urllib3 would switch check_hostname off on
            # requests' shared default SSLContext.)
            pool_kwargs["server_hostname"] = target.host
        return self.poolmanager.connection_from_host(
            host=str(address), port=target.port, scheme=target.scheme, pool_kwargs=pool_kwargs
        )

    def get_connection(self, url: str, proxies: Mapping[str, str] | None = None) -> Any:
        raise UnsafeDestination("get_connection bypasses the guard; it is not supported")

    def add_headers(self, request: PreparedRequest, **kwargs: Any) -> None:
        # The pool's host is an IP; the server must see the URL's host.
        try:
            request.headers["Host"] = _inspect(request.url, self._policy).netloc
        except _Refused as exc:  # already checked in get_connection_with_tls_context
            raise UnsafeDestination(f"refused: {exc}") from None


class _GuardedSession(requests.Session):
    def __init__(self, policy: NetPolicy) -> None:
        super().__init__()
        self.policy = policy
        self.trust_env = False  # no proxies or .netrc from the environment
        self._guard = _PinnedAdapter(policy)
        self.adapters.clear()
        self.mount("https://", self._guard)
        self.mount("http://", self._guard)

    def get_adapter(self, url: str) -> HTTPAdapter:
        # Every URL goes to the guard, which refuses other schemes itself.
        return self._guard

    def send(self, request: PreparedRequest, **kwargs: Any) -> requests.Response:
        kwargs["allow_redirects"] = False
        return super().send(request, **kwargs)

    def resolve_redirects(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return iter(())


def safe_session(policy: NetPolicy) -> requests.Session:
    """A :class:`requests.Session` that only reaches public (or allowed) hosts.

    Every request re-checks its URL against ``policy``, resolves the host once,
    raises :class:`UnsafeDestination` unless all addresses are public or the
    host is allow-listed, and connects to the first checked address. TLS
    verification and SNI use the URL's host name. Redirects are returned, not
    followed, whatever ``allow_redirects`` says. The ``Host`` header is always
    the URL's host.
    """
    return _GuardedSession(policy)


def guard_policy(session: requests.Session) -> NetPolicy | None:
    """The policy of a :func:`safe_session`; None for any other session."""
    return session.policy if isinstance(session, _GuardedSession) else None


def policy_with_hosts_of(policy: NetPolicy, *urls: str) -> NetPolicy:
    """``policy`` that also allows the hosts (with their ports) of ``urls``.

    For files an upstream returns: its own host, configured by the operator
    (the catalog's or an ``IMAGEGATE_BASE_URL_<FAMILY>`` base URL), may be
    internal; ``http`` is allowed when one of these URLs uses it.
    """
    hosts = set(policy.allowed_hosts)
    allow_http = policy.allow_http
    for url in urls:
        parts = urlsplit(url)
        if not parts.hostname:
            continue
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
        hosts.add(f"{host}:{port}" if port else host)
        allow_http = allow_http or parts.scheme.lower() == "http"
    return NetPolicy(allow_http=allow_http, allowed_hosts=frozenset(hosts))


def policy_for(settings: Settings) -> NetPolicy:
    """The deployment's policy: IMAGEGATE_ALLOW_HTTP_CALLBACKS, IMAGEGATE_ALLOWED_INTERNAL_HOSTS."""
    return NetPolicy(
        allow_http=settings.allow_http_callbacks,
        allowed_hosts=frozenset(settings.allowed_internal_hosts),
    )
