"""The SSRF guard: submit-time URL checks and the pinned, non-redirecting session.

Outside DNS is replaced by a fake resolver (monkeypatched ``socket.getaddrinfo``)
that answers made-up ``.test`` names and passes IP literals to the real one;
the servers the session talks to are real HTTP(S) servers on this machine.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.errors import InvalidRequest
from shared.netguard import NetPolicy, UnsafeDestination, check_url, is_public_address, safe_session

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"
HTTP_OK = NetPolicy(allow_http=True)


# -- fixtures: fake DNS, real local servers -------------------------------------


class FakeDNS:
    """``getaddrinfo`` for made-up names; IP literals go to the real resolver.

    ``zone[name]`` is a list of answers, one per lookup (the last repeats).
    """

    def __init__(self, zone: dict[str, list[list[str]]]) -> None:
        self.zone = zone
        self.names: list[str] = []  # every name lookup, in order
        self.literals: list[str] = []  # every IP-literal "lookup" (urllib3's connect)
        self._real = socket.getaddrinfo

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002
        name = host.decode() if isinstance(host, bytes) else str(host)
        try:
            ipaddress.ip_address(name.split("%")[0])
        except ValueError:
            pass
        else:
            self.literals.append(name)
            return self._real(host, port, family, type, proto, flags)
        self.names.append(name)
        answers = self.zone.get(name.rstrip(".").lower())
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answer = answers[min(self.names.count(name) - 1, len(answers) - 1)]
        result = []
        for ip in answer:
            if ":" in ip:
                result.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)))
            else:
                result.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)))
        return result

    def lookups_of(self, name: str) -> int:
        return self.names.count(name)


@pytest.fixture()
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS({})
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


class Receiver:
    """A real HTTP(S) server on a loopback address that records what it gets."""

    def __init__(self, host: str = "127.0.0.1", context: ssl.SSLContext | None = None) -> None:
        self.requests: list[dict[str, str]] = []
        self.sni: list[str | None] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                received.append({"path": self.path, "host": self.headers.get("Host", "")})
                if self.path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("Location", "/landed")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = b"ok"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        server_cls = type(
            "Server",
            (ThreadingHTTPServer,),
            {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET},
        )
        self.server = server_cls((host, 0), Handler)
        if context is not None:
            context.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# The IPv6 cases need ``::1``: where it is missing they fail (CI has it), nothing skips them.
needs_ipv6 = pytest.mark.ipv6


def test_this_machine_has_an_ipv6_loopback() -> None:
    assert _ipv6_loopback(), "the IPv6 cases of this file need an IPv6 loopback (::1)"


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` (it is its own trust anchor)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def _tls_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


# -- is_public_address ----------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        PUBLIC_V4,
        "1.1.1.1",
        "2606:4700:4700::1111",
        PUBLIC_V6,
        "::ffff:8.8.8.8",  # mapped public IPv4
        "2002:808:808::1",  # 6to4 of 8.8.8.8
        "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    ],
)
def test_public_addresses(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "10.1.2.3",
        "172.16.5.4",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.255",
        "0.0.0.0",
        "0.1.2.3",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.0.9",
        "192.0.2.1",
        "198.51.100.7",
        "203.0.113.9",
        "198.18.0.1",
        "198.19.255.255",
        "192.88.99.1",
        "::",
        "::1",
        "fc00::1",
        "fd00::1",
        "fe80::1",
        "fec0::1",
        "ff02::1",
        "2001:db8::1",
        "3fff::1",
        "100::1",
        "5f00::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",  # IPv4-compatible
        "::8.8.8.8",  # IPv4-compatible is refused whatever it carries
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b::7f00:1",
        "64:ff9b:1::808:808",  # NAT64 local-use
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
        "fe80::1%eth0",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


# -- check_url at submit time ---------------------------------------------------

FORBIDDEN = [
    # (url, policy, words the message must contain)
    ("http://127.0.0.1/", HTTP_OK, "loopback"),
    ("http://127.0.0.1:6379/", HTTP_OK, "loopback"),
    ("http://localhost/", HTTP_OK, "local host"),
    ("https://LocalHost./", HTTP_OK, "local host"),
    ("https://api.localhost/", HTTP_OK, "local host"),
    ("https://10.0.0.1/", NetPolicy(), "private"),
    ("https://172.16.5.4/", NetPolicy(), "private"),
    ("https://192.168.1.1/", NetPolicy(), "private"),
    ("https://169.254.169.254/latest/meta-data", NetPolicy(), "link-local"),
    ("https://100.64.0.1/", NetPolicy(), "carrier-grade NAT"),
    ("https://0.0.0.0/", NetPolicy(), "0.0.0.0/8"),
    ("https://224.0.0.1/", NetPolicy(), "multicast"),
    ("https://255.255.255.255/", NetPolicy(), "broadcast"),
    ("https://198.18.0.1/", NetPolicy(), "benchmarking"),
    ("https://192.0.2.1/", NetPolicy(), "documentation"),
    ("https://[::1]/", NetPolicy(), "loopback"),
    ("https://[::]/", NetPolicy(), "unspecified"),
    ("https://[::ffff:127.0.0.1]/", NetPolicy(), "loopback"),
    ("https://[::ffff:7f00:1]/", NetPolicy(), "loopback"),
    ("https://[::ffff:a9fe:a9fe]/", NetPolicy(), "link-local"),
    ("https://[fd00::1]/", NetPolicy(), "unique local"),
    ("https://[fe80::1]/", NetPolicy(), "link-local"),
    ("https://[fe80::1%25eth0]/", NetPolicy(), "malformed"),
    ("https://[64:ff9b::a9fe:a9fe]/", NetPolicy(), "link-local"),
    ("https://[2002:7f00:1::]/", NetPolicy(), "loopback"),
    ("https://2130706433/", NetPolicy(), "non-standard IPv4"),
    ("https://0x7f000001/", NetPolicy(), "non-standard IPv4"),
    ("https://0177.0.0.1/", NetPolicy(), "non-standard IPv4"),
    ("https://127.1/", NetPolicy(), "non-standard IPv4"),
    ("https://0x7f.0.0.1/", NetPolicy(), "non-standard IPv4"),
    ("https://127.0.0.1./", NetPolicy(), "non-standard IPv4"),
    ("https://%31%32%37.0.0.1/", NetPolicy(), "loopback"),  # requests decodes the host
    ("https://127%2e0%2e0%2e1/", NetPolicy(), "loopback"),
    ("https://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", NetPolicy(), "not valid"),
    ("https://redis/", NetPolicy(), "fully qualified"),
    ("http://example.com/hook", NetPolicy(), "https"),
    ("ftp://example.com/file", NetPolicy(), "https URL"),
    ("file:///etc/passwd", NetPolicy(allow_http=True), "https URL"),
    ("gopher://example.com:70/_x", NetPolicy(allow_http=True), "https URL"),
    ("//example.com/hook", NetPolicy(), "https URL"),
    ("example.com/hook", NetPolicy(), "https URL"),
    ("https://user:pass@example.com/", NetPolicy(), "credentials"),
    ("https://user@example.com/", NetPolicy(), "credentials"),
    ("https://example.com\\@127.0.0.1/", NetPolicy(), "backslash"),
    ("https:///hook", NetPolicy(), "no host"),
    ("https://:443/hook", NetPolicy(), "no host"),
    ("https://example.com:0/", NetPolicy(), "port"),
    ("https://example.com:65536/", NetPolicy(), "65535"),
    ("https://example.com:http/", NetPolicy(), "malformed"),
    ("https://example.com/" + "a" * 2048, NetPolicy(), "2048"),
    ("https://example.com/a b", NetPolicy(), "whitespace"),
    ("https://example.com/\r\nX-Injected: 1", NetPolicy(), "whitespace"),
    ("https://exa\u200bmple.com/", NetPolicy(), "control"),
    ("", NetPolicy(), "non-empty"),
]


@pytest.mark.parametrize("resolve", [True, False], ids=["resolve", "no-resolve"])
@pytest.mark.parametrize(("url", "policy", "why"), FORBIDDEN)
def test_check_url_refuses(
    dns: FakeDNS, url: str, policy: NetPolicy, why: str, resolve: bool
) -> None:
    dns.zone["example.com"] = [[PUBLIC_V4]]  # so only the URL's shape can be at fault
    with pytest.raises(InvalidRequest) as info:
        check_url(url, policy, param="webhook_url", resolve=resolve)
    err = info.value
    assert err.param == "webhook_url"
    assert err.code == "unsafe_url"
    assert err.status == 400
    assert err.message.startswith("Invalid webhook_url: ")
    assert why.lower() in err.message.lower()


def test_check_url_accepts_public_literals_without_dns(dns: FakeDNS) -> None:
    policy = NetPolicy()
    assert check_url(f"https://{PUBLIC_V4}/", policy, param="image") == f"https://{PUBLIC_V4}/"
    assert check_url(f"https://[{PUBLIC_V6}]:8443/x", policy, param="image") == (
        f"https://[{PUBLIC_V6}]:8443/x"
    )
    assert dns.names == [] and dns.literals == []


def test_check_url_normalises() -> None:
    policy = NetPolicy(allow_http=True)
    assert (
        check_url("HTTPS://Example.COM:443/p?q=1#frag", policy, param="image", resolve=False)
        == "https://example.com/p?q=1"
    )
    assert (
        check_url("http://example.com:8080", policy, param="image", resolve=False)
        == "http://example.com:8080/"
    )
    assert (
        check_url("https://b\u00fccher.de/x", policy, param="image", resolve=False)
        == "https://xn--bcher-kva.de/x"
    )


def test_check_url_resolves_names(dns: FakeDNS) -> None:
    dns.zone.update(
        {
            "public.test": [[PUBLIC_V4, PUBLIC_V6]],
            "internal.test": [["10.0.0.5"]],
            "mixed.test": [[PUBLIC_V4, "10.0.0.5"]],
            "v6internal.test": [[PUBLIC_V4, "fd12::5"]],
        }
    )
    policy = NetPolicy()
    assert check_url("https://public.test/h", policy, param="webhook_url") == (
        "https://public.test/h"
    )
    for name in ("internal.test", "mixed.test", "v6internal.test", "nxdomain.test"):
        with pytest.raises(InvalidRequest) as info:
            check_url(f"https://{name}/h", policy, param="webhook_url")
        assert info.value.param == "webhook_url" and info.value.code == "unsafe_url"
        assert name in info.value.message
        assert "10.0.0.5" not in info.value.message and "fd12" not in info.value.message
    # Without resolution a name that is not obviously local passes.
    assert check_url("https://internal.test/h", policy, param="webhook_url", resolve=False)


def test_allowed_hosts_skip_the_address_check_only(dns: FakeDNS) -> None:
    dns.zone["svc.test"] = [["10.0.0.7"]]
    policy = NetPolicy(allowed_hosts=frozenset({"127.0.0.1", "SVC.test:8443", "[::1]:9000"}))
    assert check_url("https://127.0.0.1:5000/x", policy, param="p") == "https://127.0.0.1:5000/x"
    assert check_url("https://svc.test:8443/x", policy, param="p") == "https://svc.test:8443/x"
    assert check_url("https://[::1]:9000/", policy, param="p") == "https://[::1]:9000/"
    for url in (
        "https://svc.test:8444/x",  # wrong port
        "https://[::1]:9001/",  # wrong port
        "https://127.0.0.2/",  # another address
        "http://127.0.0.1/",  # scheme checks still apply
        "https://u:p@127.0.0.1/",  # and so do shape checks
    ):
        with pytest.raises(InvalidRequest):
            check_url(url, policy, param="p")


# -- safe_session at connection time -------------------------------------------


def test_rebinding_is_caught_at_delivery(dns: FakeDNS, receiver: Receiver) -> None:
    dns.zone["rebind.test"] = [[PUBLIC_V4], ["127.0.0.1"]]
    url = f"http://rebind.test:{receiver.port}/hook"
    assert check_url(url, HTTP_OK, param="webhook_url") == url

    with safe_session(HTTP_OK) as session, pytest.raises(UnsafeDestination) as info:
        session.post(url, json={"id": "job"}, timeout=5)
    assert "loopback" in str(info.value)
    assert dns.lookups_of("rebind.test") == 2
    assert dns.literals == []  # no socket was even attempted
    assert receiver.requests == []


def test_session_refuses_what_check_url_refuses(dns: FakeDNS, receiver: Receiver) -> None:
    dns.zone["mixed.test"] = [[PUBLIC_V4, "127.0.0.1"]]
    refused = [
        (HTTP_OK, f"http://127.0.0.1:{receiver.port}/"),
        (HTTP_OK, f"http://mixed.test:{receiver.port}/"),
        (HTTP_OK, f"http://2130706433:{receiver.port}/"),
        (HTTP_OK, f"http://localhost:{receiver.port}/"),
        (NetPolicy(allowed_hosts=frozenset({"127.0.0.1"})), f"http://127.0.0.1:{receiver.port}/"),
        (HTTP_OK, "ftp://example.com/"),
    ]
    for policy, url in refused:
        with safe_session(policy) as session, pytest.raises(UnsafeDestination):
            session.get(url, timeout=5)
    assert receiver.requests == []


def test_session_ignores_proxies(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    # A proxy would resolve the name itself, so an explicit one is refused and
    # the environment's is not used at all.
    policy = NetPolicy(allow_http=True, allowed_hosts=frozenset({"127.0.0.1"}))
    url = f"http://127.0.0.1:{receiver.port}/direct"
    with safe_session(policy) as session:
        with pytest.raises(UnsafeDestination):
            session.get(url, proxies={"http": "http://proxy.test:3128"}, timeout=5)
        monkeypatch.setenv("HTTP_PROXY", "http://proxy.test:3128")
        monkeypatch.setenv("NO_PROXY", "")
        assert session.get(url, timeout=5).status_code == 200
    assert [r["path"] for r in receiver.requests] == ["/direct"]


def test_allowed_host_is_reached_and_redirects_are_not_followed(receiver: Receiver) -> None:
    policy = NetPolicy(allow_http=True, allowed_hosts=frozenset({"127.0.0.1"}))
    with safe_session(policy) as session:
        response = session.get(f"http://127.0.0.1:{receiver.port}/hello", timeout=5)
        assert response.status_code == 200
        assert response.text == "ok"

        redirected = session.get(
            f"http://127.0.0.1:{receiver.port}/redirect", allow_redirects=True, timeout=5
        )
        assert redirected.status_code == 302
        assert redirected.headers["Location"] == "/landed"
        assert redirected.history == []

        posted = session.post(f"http://127.0.0.1:{receiver.port}/redirect", data=b"x", timeout=5)
        assert posted.status_code == 302

    assert receiver.requests == [
        {"path": "/hello", "host": f"127.0.0.1:{receiver.port}"},
        {"path": "/redirect", "host": f"127.0.0.1:{receiver.port}"},
        {"path": "/redirect", "host": f"127.0.0.1:{receiver.port}"},
    ]


def test_session_connects_to_the_address_it_checked(dns: FakeDNS, receiver: Receiver) -> None:
    # Later lookups would answer an unroutable documentation address: a second
    # lookup for the connection would time out instead of reaching the receiver.
    dns.zone["svc.test"] = [["127.0.0.1"], ["192.0.2.1"]]
    policy = NetPolicy(allow_http=True, allowed_hosts=frozenset({"svc.test"}))
    with safe_session(policy) as session:
        first = session.get(f"http://svc.test:{receiver.port}/one", timeout=3)
        assert first.status_code == 200
        assert dns.lookups_of("svc.test") == 1
        dns.zone["svc.test"] = [["127.0.0.1"]]
        second = session.get(f"http://svc.test:{receiver.port}/two", timeout=3)
        assert second.status_code == 200
        assert dns.lookups_of("svc.test") == 2  # one lookup per request, never reused
    assert receiver.requests == [
        {"path": "/one", "host": f"svc.test:{receiver.port}"},
        {"path": "/two", "host": f"svc.test:{receiver.port}"},
    ]
    assert set(dns.literals) <= {"127.0.0.1"}


@needs_ipv6
def test_session_over_ipv6(dns: FakeDNS) -> None:
    dns.zone["svc6.test"] = [["::1"]]
    policy = NetPolicy(allow_http=True, allowed_hosts=frozenset({"::1", "svc6.test"}))
    with Receiver("::1") as server, safe_session(policy) as session:
        assert session.get(f"http://[::1]:{server.port}/lit", timeout=5).status_code == 200
        assert session.get(f"http://svc6.test:{server.port}/name", timeout=5).status_code == 200
    assert server.requests == [
        {"path": "/lit", "host": f"[::1]:{server.port}"},
        {"path": "/name", "host": f"svc6.test:{server.port}"},
    ]
    assert dns.lookups_of("svc6.test") == 1


# -- TLS: SNI and verification against the name, connection to the IP -----------


@pytest.mark.parametrize("loopback", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)])
def test_https_verifies_the_name_while_connecting_to_the_ip(
    tmp_path: Path, dns: FakeDNS, loopback: str
) -> None:
    cert_file, key_file = _self_signed(tmp_path, "svc.test")
    dns.zone["svc.test"] = [[loopback]]
    policy = NetPolicy(allowed_hosts=frozenset({"svc.test"}))
    with (
        Receiver(loopback, _tls_context(cert_file, key_file)) as server,
        safe_session(policy) as session,
    ):
        response = session.get(
            f"https://svc.test:{server.port}/tls", verify=str(cert_file), timeout=5
        )
        assert response.status_code == 200
        # Untrusted without the test's own trust anchor.
        with pytest.raises(requests.exceptions.SSLError):
            session.get(f"https://svc.test:{server.port}/untrusted", timeout=5)
    assert server.sni == ["svc.test", "svc.test"]
    assert server.requests == [{"path": "/tls", "host": f"svc.test:{server.port}"}]
    assert set(dns.literals) <= {loopback}


def test_https_refuses_a_certificate_for_another_name(tmp_path: Path, dns: FakeDNS) -> None:
    cert_file, key_file = _self_signed(tmp_path, "other.test")
    dns.zone.update({"svc.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
    policy = NetPolicy(allowed_hosts=frozenset({"svc.test", "other.test"}))
    with (
        Receiver("127.0.0.1", _tls_context(cert_file, key_file)) as server,
        safe_session(policy) as session,
    ):
        with pytest.raises(requests.exceptions.SSLError, match="svc.test"):
            session.get(f"https://svc.test:{server.port}/wrong", verify=str(cert_file), timeout=5)
        # The same server and trust anchor are fine under the certificate's name.
        ok = session.get(
            f"https://other.test:{server.port}/right", verify=str(cert_file), timeout=5
        )
        assert ok.status_code == 200
    assert server.sni == ["svc.test", "other.test"]
    assert server.requests == [{"path": "/right", "host": f"other.test:{server.port}"}]
