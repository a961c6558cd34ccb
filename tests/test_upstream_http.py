"""The shared upstream HTTP helper against the simulator: retries, Retry-After,
deadlines, bounded downloads and error translation."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from shared.errors import DeadlineExceeded, InvalidRequest, UpstreamError
from tests.conftest import SIM_KEY
from tests.support.peers import SlowPeer
from tests.support.sim import fault, sent_with, tagged
from workers.http import UpstreamHTTP, parse_retry_after

AUTH = {"Authorization": f"Bearer {SIM_KEY}"}
BODY = {"model": "dall-e-2", "prompt": "x", "size": "256x256", "response_format": "url"}


def _http(budget: float = 20.0, retries: int = 2) -> UpstreamHTTP:
    return UpstreamHTTP(
        session=requests.Session(),
        deadline=time.time() + budget,
        provider="sim",
        max_retries=retries,
        backoff_base=0.05,
    )


def _config(sim: str, **config) -> None:
    requests.post(f"{sim}/_sim/config", json=config, timeout=5).raise_for_status()


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= parse_retry_after(future) <= 31
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_5xx_is_retried_then_succeeds(sim: str) -> None:
    prompt = fault(500, 2)
    body = {**BODY, "prompt": prompt}
    response = _http().request("POST", f"{sim}/v1/images/generations", json_body=body, headers=AUTH)
    assert response.status_code == 200
    assert [c["status"] for c in sent_with(sim, prompt)] == [500, 500, 200]


def test_retries_are_bounded_and_end_in_upstream_error(sim: str) -> None:
    prompt = fault(503, 10)
    with pytest.raises(UpstreamError) as info:
        _http(retries=1).request(
            "POST", f"{sim}/v1/images/generations", json_body={**BODY, "prompt": prompt},
            headers=AUTH,
        )  # fmt: skip
    assert len(sent_with(sim, prompt)) == 2
    assert info.value.headers["x-upstream-request-id"].startswith("req_")


def test_retry_after_beyond_the_deadline_gives_up_at_once(sim: str) -> None:
    prompt = fault(429, 1, retry_after=60)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        _http(budget=5).request(
            "POST", f"{sim}/v1/images/generations", json_body={**BODY, "prompt": prompt},
            headers=AUTH,
        )  # fmt: skip
    assert info.value.code == "upstream_rate_limited"
    assert len(sent_with(sim, prompt)) == 1
    assert time.monotonic() - started < 5  # did not sleep into the deadline


def test_a_slow_upstream_hits_the_deadline(sim: str) -> None:
    _config(sim, latency=5)
    with pytest.raises(DeadlineExceeded):
        _http(budget=1).request(
            "POST", f"{sim}/v1/images/generations", json_body=BODY, headers=AUTH
        )


def test_a_trickling_answer_is_cut_off_at_the_deadline(sim: str) -> None:
    """A read timeout is per socket read: 16 bytes every 0.5 s never trip it."""
    _config(sim, trickle=0.5)
    http = _http(budget=1.5, retries=0)
    with pytest.raises(DeadlineExceeded):
        http.request("POST", f"{sim}/v1/images/generations", json_body=BODY, headers=AUTH)


def test_a_trickling_download_is_cut_off_at_the_deadline(sim: str) -> None:
    answer = _http().request("POST", f"{sim}/v1/images/generations", json_body=BODY, headers=AUTH)
    _config(sim, trickle=0.5)
    with pytest.raises(DeadlineExceeded):
        _http(budget=1.5, retries=0).download(answer.json()["data"][0]["url"], max_bytes=10**7)


@pytest.fixture()
def slow_peers() -> Iterator[list[SlowPeer]]:
    started: list[SlowPeer] = []
    yield started
    for peer in started:
        peer.stop()


def _slow(peers: list[SlowPeer], mode: str, **kw) -> str:
    peer = SlowPeer(mode, **kw).start()
    peers.append(peer)
    return peer.url("/v1/images/generations")


# A peer trickling 16 bytes every 2 s never trips a per-read timeout; the helper
# must still end the exchange by the deadline (2 s here; 3 s of margin).
SLOW = [
    ("trickle_body", {"interval": 2.0, "piece": 16, "declared": 4096}),
    ("trickle_headers", {"interval": 0.5}),
]


@pytest.mark.parametrize(("mode", "kw"), SLOW, ids=[m for m, _ in SLOW])
def test_a_slow_answer_ends_by_the_deadline_in_wall_clock_time(
    slow_peers: list[SlowPeer], mode: str, kw: dict
) -> None:
    url = _slow(slow_peers, mode, **kw)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        _http(budget=2, retries=1).request("POST", url, json_body=BODY)
    assert time.monotonic() - started < 2 + 3


@pytest.mark.parametrize(("mode", "kw"), SLOW, ids=[m for m, _ in SLOW])
def test_a_slow_download_ends_by_the_deadline_in_wall_clock_time(
    slow_peers: list[SlowPeer], mode: str, kw: dict
) -> None:
    url = _slow(slow_peers, mode, content_type="image/png", **kw)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        _http(budget=2, retries=1).download(url, max_bytes=10**7)
    assert time.monotonic() - started < 2 + 3


def test_a_slow_attempt_ends_at_the_attempt_timeout_and_is_retried(
    slow_peers: list[SlowPeer],
) -> None:
    url = _slow(slow_peers, "trickle_body", interval=0.5, piece=16, declared=4096)
    http = _http(budget=20, retries=1)
    http.attempt_timeout = 1.0
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        http.request("POST", url, json_body=BODY)
    assert info.value.code == "upstream_timeout"
    assert len(slow_peers[0].requests) == 2  # cut at 1 s, retried once, cut again
    assert time.monotonic() - started < 2 * 1 + 3


def test_400_becomes_invalid_request_with_the_upstream_code(sim: str) -> None:
    body = {**BODY, "size": "7x7", "prompt": tagged()}
    with pytest.raises(InvalidRequest) as info:
        _http().request("POST", f"{sim}/v1/images/generations", json_body=body, headers=AUTH)
    assert info.value.param == "size"
    assert "7x7" in info.value.message
    assert len(sent_with(sim, body["prompt"])) == 1  # not retried


def test_bad_credentials_are_an_upstream_error_not_the_clients(sim: str) -> None:
    with pytest.raises(UpstreamError) as info:
        _http().request(
            "POST", f"{sim}/v1/images/generations", json_body=BODY,
            headers={"Authorization": "Bearer wrong"},
        )  # fmt: skip
    assert info.value.code == "upstream_auth_failed"


def test_downloads_are_bounded_in_size(sim: str) -> None:
    response = _http().request("POST", f"{sim}/v1/images/generations", json_body=BODY, headers=AUTH)
    url = response.json()["data"][0]["url"]
    data, content_type = _http().download(url, max_bytes=10_000_000)
    assert data.startswith(b"\x89PNG") and content_type == "image/png"
    with pytest.raises(UpstreamError) as info:
        _http().download(url, max_bytes=100)
    assert info.value.code == "upstream_image_too_large"


def test_a_missing_result_file_is_an_upstream_error(sim: str) -> None:
    with pytest.raises(UpstreamError) as info:
        _http().download(f"{sim}/files/does-not-exist.png", max_bytes=1000)
    assert "404" in info.value.message


def test_malformed_json_is_an_upstream_error(sim: str) -> None:
    page = requests.get(f"{sim}/_sim/health", timeout=5)
    page._content = b"{not json"
    with pytest.raises(UpstreamError) as info:
        _http().json(page)
    assert info.value.code == "upstream_malformed_response"
