"""Hosts for tests in network namespaces: a bridge, a namespace per host, a veth each.

A :class:`Lan` is one private /24 on a bridge this test creates (the test
process itself sits on the bridge's address, as the "client" host). Every
:class:`Host` has its own network namespace, address and UTS hostname, so
processes started on it see a machine of their own: they reach the others
only through the bridge, and nothing else (no default route). Cutting a host's
link (:meth:`Host.cut`) drops its packets silently, as a pulled cable does;
nothing answers with a reset. Everything is removed by :meth:`Lan.remove`.

Needs root and iproute2; a missing prerequisite fails the test, it does not
skip it (CI runs as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.processes import Process

SUBNET = "10.213.{lan}"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def prerequisites() -> str | None:
    """Why hosts cannot be made here, or ``None``."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "iproute2's `ip` and util-linux's `unshare` are needed"
    return None


class Host:
    def __init__(self, lan: Lan, name: str, address: str, veth: str) -> None:
        self.lan, self.name, self.address, self.veth = lan, name, address, veth
        self.netns = f"ig-{lan.tag}-{name}"
        self.processes: list[Process] = []

    def process(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str | None], log_dir: Path
    ) -> Process:
        """A process on this host (in its namespace, with its hostname); not started."""
        wrapped = [
            "ip", "netns", "exec", self.netns,
            "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *argv,
        ]  # fmt: skip
        proc = Process(f"{self.name}-{name}", wrapped, env=env, log_dir=log_dir)
        self.processes.append(proc)
        return proc

    def cut(self) -> None:
        """Unplug the host: its packets are dropped both ways, nothing is reset."""
        _ip("link", "set", self.veth, "down")

    def restore(self) -> None:
        _ip("link", "set", self.veth, "up")

    def kill_all(self) -> None:
        """SIGKILL every process started on the host, as a power loss would."""
        pids = subprocess.run(
            ["ip", "netns", "pids", self.netns], capture_output=True, text=True, check=True
        ).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass


class Lan:
    """A bridge with hosts on ``10.213.<lan>.0/24``; the test process is ``.1``."""

    def __init__(self, lan: int = 77) -> None:
        self.tag = uuid.uuid4().hex[:5]
        self.prefix = SUBNET.format(lan=lan)
        self.bridge = f"igbr{self.tag}"
        self.gateway = f"{self.prefix}.1"
        self.hosts: dict[str, Host] = {}
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def host(self, name: str) -> Host:
        address = f"{self.prefix}.{len(self.hosts) + 2}"
        veth = f"ig{self.tag}{len(self.hosts)}"
        host = Host(self, name, address, veth)
        _ip("netns", "add", host.netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        for args in (
            ("addr", "add", f"{address}/24", "dev", "eth0"),
            ("link", "set", "eth0", "up"),
            ("link", "set", "lo", "up"),
        ):
            _ip("-n", host.netns, *args)
        self.hosts[name] = host
        return host

    def remove(self) -> None:
        for host in self.hosts.values():
            for proc in host.processes:
                proc.stop(timeout=5)
            host.kill_all()
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
