"""Workers announce the families they serve; the web counts a family as served when its
own settings have the key or a live worker announces it (shared/presence.py), on a real
Redis. The whole path through a web without keys: tests/test_presence_e2e.py."""

from __future__ import annotations

import dataclasses
import secrets
import time

import redis

from shared.catalog import Catalog
from shared.presence import Presence, presence_key, served_here, why_unusable
from shared.redis_client import connect
from shared.settings import Settings
from workers.liveness import HeartbeatAndReaper, Running

NO_KEYS = Settings.from_env({})
WITH_OPENAI = Settings.from_env({"OPENAI_API_KEY": "sk-test"})
CATALOG: Catalog = NO_KEYS.load_catalog()
OPENAI = CATALOG.families["openai"]


def _client(redis_server) -> redis.Redis:
    """A new client (so a new cached Presence) on a database no running worker uses."""
    return connect(redis_server.url.rsplit("/", 1)[0] + "/10")


def _family() -> str:
    return "fam_" + secrets.token_hex(4)


def test_an_announcement_is_live_for_its_ttl_and_counts_each_worker_once(redis_server) -> None:
    presence = Presence(_client(redis_server))
    fam, other = _family(), _family()
    presence.announce("w1:1", [fam], ttl=30)
    presence.announce("w1:1", [fam], ttl=30)  # renewed, still one worker
    presence.announce("w2:2", [fam, other], ttl=5)
    assert presence.live([fam, other]) == {fam: 2, other: 1}
    # By Redis' clock: 10 s on, only the 30 s announcement holds.
    assert presence.live([fam, other], now=time.time() + 10) == {fam: 1, other: 0}
    assert presence.live([fam], now=time.time() + 40) == {fam: 0}
    # The zset expires with its last announcement: nothing is left behind.
    assert 25_000 < presence._redis.pttl(presence_key(fam)) <= 30_000


def test_withdraw_ends_an_announcement_at_once(redis_server) -> None:
    presence = Presence(_client(redis_server))
    fam = _family()
    presence.announce("w1:1", [fam], ttl=30)
    presence.withdraw("w1:1", [fam])
    assert presence.live([fam]) == {fam: 0}


def test_the_web_view_is_cached_per_process(redis_server) -> None:
    clock = [100.0]
    presence = Presence(_client(redis_server), cache_seconds=1.5, monotonic=lambda: clock[0])
    fam = _family()
    assert presence.served([fam]) == frozenset()
    presence.announce("w1:1", [fam], ttl=30)
    assert presence.served([fam]) == frozenset()  # cached: Redis is not asked again yet
    clock[0] += 1.6
    assert presence.served([fam]) == {fam}
    presence.withdraw("w1:1", [fam])
    clock[0] += 1.0
    assert presence.served([fam]) == {fam}
    clock[0] += 1.0
    assert presence.served([fam]) == frozenset()


def test_a_family_is_served_with_the_webs_own_key_or_a_live_worker(redis_server) -> None:
    # The web's own key: usable, and Redis is not even asked (this one is unreachable).
    assert why_unusable(WITH_OPENAI, OPENAI, connect("redis://127.0.0.1:1/0")) == ""
    # No key and no worker: refused, naming the variable.
    client = _client(redis_server)
    client.delete(presence_key("openai"))
    reason = why_unusable(NO_KEYS, OPENAI, client)
    assert "no running worker serves 'openai'" in reason and "OPENAI_API_KEY" in reason
    # A worker with the key announces the family: usable.
    Presence(client).announce("w1:1", ["openai"], ttl=30)
    try:
        assert why_unusable(NO_KEYS, OPENAI, _client(redis_server)) == ""
    finally:
        client.delete(presence_key("openai"))


def test_a_family_switched_off_in_the_catalog_stays_off(redis_server) -> None:
    client = _client(redis_server)
    family = dataclasses.replace(OPENAI, available=False, unavailable_reason="switched off")
    Presence(client).announce("w1:1", [family.name], ttl=30)
    try:
        assert why_unusable(WITH_OPENAI, family, _client(redis_server)) == "switched off"
    finally:
        client.delete(presence_key(family.name))


def test_a_worker_announces_the_families_of_its_queues_it_can_serve() -> None:
    families = CATALOG.families.values()
    assert served_here(WITH_OPENAI, families, {"openai", "webhooks"}) == ["openai"]
    assert served_here(NO_KEYS, families, {"openai"}) == []  # no key: not announced
    assert served_here(WITH_OPENAI, families, {"local"}) == ["local"]  # needs no key


def test_the_heartbeat_thread_announces_at_start_and_with_every_beat() -> None:
    calls: list[float] = []

    class Jobs:  # what the heartbeat thread uses of a JobStore
        liveness = type("L", (), {"stale_after": 60.0})()

        def beat(self, running: dict[str, int]) -> int:
            return 0

        def due(self) -> list[str]:
            return []

    threads = HeartbeatAndReaper(
        Jobs(),  # type: ignore[arg-type]
        CATALOG,
        lambda job_id, queue: None,
        heartbeat_seconds=0.1,
        reaper_interval_seconds=10,
        running=Running(),
        announce=lambda: calls.append(time.monotonic()),
    ).start()
    try:
        time.sleep(0.55)
    finally:
        threads.stop()
    assert 4 <= len(calls) <= 7
    assert calls[0] - min(calls) == 0 and calls[1] - calls[0] >= 0.09


def test_an_announcement_that_fails_does_not_stop_the_heartbeat() -> None:
    beats: list[int] = []

    class Jobs:
        liveness = type("L", (), {"stale_after": 60.0})()

        def beat(self, running: dict[str, int]) -> int:
            beats.append(1)
            return 0

        def due(self) -> list[str]:
            return []

    def announce() -> None:
        raise redis.ConnectionError("Redis is away")

    threads = HeartbeatAndReaper(
        Jobs(),  # type: ignore[arg-type]
        CATALOG,
        lambda job_id, queue: None,
        heartbeat_seconds=0.05,
        reaper_interval_seconds=10,
        running=Running(),
        announce=announce,
    ).start()
    try:
        time.sleep(0.4)
    finally:
        threads.stop()
    assert len(beats) >= 3
