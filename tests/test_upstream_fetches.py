"""The shared upstream HTTP helper (``workers/http.py``): what a rate-limited answer and a
result download's redirects and declared size do, against the simulator and hostile
peers on loopback. (``tests/test_upstream_http.py`` covers retries of 5xx, deadlines
and error translation.)"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from shared.errors import UpstreamError
from tests.conftest import SIM_KEY
from tests.support.peers import SlowPeer
from tests.support.sim import fault, sent_with
from workers.http import MAX_REDIRECTS, UpstreamHTTP

AUTH = {"Authorization": f"Bearer {SIM_KEY}"}
BODY = {"model": "dall-e-2", "size": "256x256", "response_format": "url"}
SECRET = "Bearer sk-download-secret-0123456789"


def _http(budget: float = 20.0, retries: int = 2) -> UpstreamHTTP:
    return UpstreamHTTP(
        session=requests.Session(),
        deadline=time.time() + budget,
        provider="sim",
        max_retries=retries,
        backoff_base=0.05,
    )


@pytest.fixture()
def peers() -> Iterator[list[SlowPeer]]:
    started: list[SlowPeer] = []
    yield started
    for peer in started:
        peer.stop()


def _peer(peers: list[SlowPeer], mode: str, **kw) -> SlowPeer:
    peer = SlowPeer(mode, **kw).start()
    peers.append(peer)
    return peer


def _headers(raw: bytes) -> dict[str, str]:
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1")
    return {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:])
    }


def test_a_429_is_retried_after_its_retry_after_and_then_succeeds(sim: str) -> None:
    prompt = fault(429, 1, retry_after=0.6)
    started = time.monotonic()
    response = _http().request(
        "POST", f"{sim}/v1/images/generations", json_body={**BODY, "prompt": prompt}, headers=AUTH
    )
    assert response.status_code == 200
    assert [c["status"] for c in sent_with(sim, prompt)] == [429, 200]
    assert time.monotonic() - started >= 0.6  # it waited as asked, not the 0.05 s backoff


def test_a_download_redirected_to_another_host_goes_there_without_the_credentials(
    peers: list[SlowPeer],
) -> None:
    image = _peer(peers, "huge_body", declared=1000, content_type="image/png")
    redirector = _peer(peers, "redirect", location=image.url("/img.png"))  # another port
    data, content_type = _http().download(
        redirector.url("/start"), max_bytes=10_000, headers={"Authorization": SECRET}
    )
    assert len(data) == 1000 and content_type == "image/png"
    assert _headers(redirector.requests[0])["authorization"] == SECRET
    assert "authorization" not in _headers(image.requests[0])


def test_a_download_follows_at_most_max_redirects(peers: list[SlowPeer]) -> None:
    image = _peer(peers, "huge_body", declared=100, content_type="image/png")
    chain = [image.url("/img.png")]
    for i in range(MAX_REDIRECTS + 1):
        chain.insert(0, _peer(peers, "redirect", location=chain[0]).url(f"/hop{i}"))
    # MAX_REDIRECTS hops are followed...
    data, _ = _http().download(chain[1], max_bytes=10_000)
    assert len(data) == 100
    # ...one more is refused.
    with pytest.raises(UpstreamError) as info:
        _http().download(chain[0], max_bytes=10_000)
    assert info.value.code == "upstream_too_many_redirects"


def test_a_download_declaring_more_than_the_cap_is_refused_before_reading_it(
    peers: list[SlowPeer],
) -> None:
    cap = 8 * 1024 * 1024
    huge = _peer(peers, "huge_body", declared=200 * 1024 * 1024, content_type="image/png")
    with pytest.raises(UpstreamError) as info:
        _http().download(huge.url("/big.png"), max_bytes=cap)
    assert info.value.code == "upstream_image_too_large"
    time.sleep(0.5)  # what the peer managed to push: socket buffers, not the cap's worth
    assert max(huge.sent) < cap
