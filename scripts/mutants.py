# ruff: noqa: E501 - the fault table quotes code lines as they are
"""Mutation testing over hand-picked faults: does a test notice when the code that
matters most goes wrong in a small, plausible way?

Each :class:`Fault` names a file, an exact piece of its text, what replaces it,
and the tests that should notice. For each fault, in a temporary ``git worktree``
of HEAD (never the working tree: other people edit it), the piece is replaced,
those tests run, and the file is put back. A fault is *killed* when its tests
fail, *survived* when they pass. Before anything runs, every fault's text must
be found exactly once: a fault whose code has moved or changed is an error, so
the list cannot rot silently (fix the fault, or drop it if the code is gone).

Why a list of our own rather than mutmut or cosmic-ray: the money and job
transitions live in Lua (``shared/lua/*.lua``), which Python mutation tools do not
touch; mutmut 3's trampolines only reach code imported in the test process, not
the worker processes that tests start; and a generated run over
``shared/sizing.py`` alone made 1202 mutants (10 min, 163 survivors, most of them
equivalent: messages, reprs, unreachable guards). Each fault here is one a
reviewer would worry about, and each survivor is worth a test or an explanation.

Usage (from the repository root, with the project's virtualenv)::

    python scripts/mutants.py              # every fault; exit 1 if one survives
    python scripts/mutants.py --list       # the faults, without running anything
    python scripts/mutants.py -k webhooks  # faults whose id or path contains "webhooks"
    python scripts/mutants.py -k settle-twice,http-429  # several, by id

It runs the tests of one fault at a time (``nice``-d), with ``-x`` and without
random order; a full run takes about ten minutes on two cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Test selections, fastest first that still notices: the unit tests of each area run
# against a private redis-server; the live-stack (e2e) files are left out on purpose.
BILLING = ("tests/test_admission.py", "tests/test_billing_units.py", "tests/test_settle.py")
JOBS = ("tests/test_jobs.py", "tests/test_settle.py", "tests/test_webhooks.py", "tests/test_liveness.py",
        "-k", "not clock_skew and not redis_outage")  # fmt: skip
LIVENESS = ("tests/test_liveness.py",)
NETGUARD = ("tests/test_netguard.py",)
SIZING = ("tests/test_sizing.py",)
WEBHOOKS = ("tests/test_webhooks.py",)
HTTP = (
    "tests/test_upstream_http.py",
    "tests/test_upstream_fetches.py",
    "tests/test_result_fetch_guard.py",
    "tests/test_secrets_isolation_e2e.py::test_an_upstream_that_echoes_the_key_gets_it_redacted",
    "tests/test_secrets_isolation_e2e.py::test_credentials_sent_lists_each_credential_longest_first_and_redact_hides_it",
)


@dataclass(frozen=True)
class Fault:
    id: str
    path: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    # Why no test can notice this fault (it changes nothing a caller can observe), if so:
    # it is then reported as "equivalent" and does not fail the run.
    equivalent: str = ""


FAULTS: list[Fault] = [
    # -- shared/billing.py and its scripts (admit.lua, _settle.lua, release_idempotency.lua)
    Fault("admit-no-balance-check", "shared/lua/admit.lua",
          "if not a.unlimited and balance < charge then", "if false then", BILLING),
    Fault("admit-balance-checked-after-counting", "shared/lua/admit.lua",
          "local balance = tonumber(redis.call('GET', KEYS[2]) or '0')\n"
          "if not a.unlimited and balance < charge then\n"
          "  return {'balance', tostring(balance), tostring(charge)}\nend\n",
          "local balance = tonumber(redis.call('GET', KEYS[2]) or '0')\n",
          BILLING),
    Fault("admit-window-admits-one-too-many", "shared/lua/admit.lua",
          "if cur + w.amount > w.limit then", "if cur + w.amount > w.limit + 1 then", BILLING),
    Fault("admit-window-never-expires", "shared/lua/admit.lua",
          "if count == w.amount then redis.call('EXPIRE', key, w.ttl) end", "", BILLING),
    Fault("admit-sliding-window-counts-old-images", "shared/lua/admit.lua",
          "cur = redis.call('ZCOUNT', key, '(' .. w.since, '+inf')",
          "cur = redis.call('ZCARD', key)", BILLING),
    Fault("admit-free-images-not-counted", "shared/lua/admit.lua",
          "  redis.call('INCRBY', KEYS[6], free)\n", "", ("tests/test_limits.py",)),
    Fault("admit-budget-not-checked", "shared/lua/admit.lua",
          "if b.cap > 0 and charge > 0 and spent + charge > b.cap then", "if false then",
          ("tests/test_limits.py",)),
    Fault("admit-n-above-a-whole-window-is-a-429", "shared/billing.py",
          "            if window.amount > window.limit:", "            if False:",
          ("tests/test_limits.py",)),
    Fault("admit-unlimited-key-charged", "shared/lua/admit.lua",
          "if not a.unlimited then balance = redis.call('DECRBY', KEYS[2], charge) end",
          "balance = redis.call('DECRBY', KEYS[2], charge)", BILLING),
    Fault("admit-idempotency-key-not-stored", "shared/lua/admit.lua",
          "  redis.call('SET', KEYS[4], a.idempotency, 'EX', tonumber(a.idempotency_ttl))\n", "",
          BILLING),
    Fault("admit-no-reserve-entry", "shared/lua/admit.lua",
          "redis.call('XADD', KEYS[3], '*', 'kind', 'reserve', 'job', record.job_id,",
          "(function(...) end)('XADD', KEYS[3], '*', 'kind', 'reserve', 'job', record.job_id,",
          BILLING),
    Fault("limits-per-day-ignored", "shared/billing.py",
          "    if limit.per_day:", "    if False:", BILLING),
    Fault("limits-day-window-keyed-by-minute", "shared/billing.py",
          'f"ig:rl:{key.id}:{model.id}:d:{day}"', 'f"ig:rl:{key.id}:{model.id}:d:{minute}"',
          BILLING),
    Fault("money-seventh-decimal-truncated", "shared/billing.py",
          "    if micros != micros.to_integral_value():", "    if False:", BILLING),
    Fault("money-no-upper-bound", "shared/billing.py",
          "    if abs(value) > MAX_AMOUNT:", "    if False:", BILLING),
    Fault("settle-refunds-one-image-too-many", "shared/lua/_settle.lua",
          "local refund = charged - spent", "local refund = charged - spent + unit", BILLING),
    Fault("settle-delivered-not-capped-at-n", "shared/lua/_settle.lua",
          "  if delivered > n then delivered = n end\n", "", BILLING),
    Fault("settle-twice", "shared/lua/_settle.lua",
          "if redis.call('HGET', k.job, 'billed') ~= '1' or redis.call('HGET', k.job, 'settled') then",
          "if redis.call('HGET', k.job, 'billed') ~= '1' then", BILLING,
          equivalent="settle() runs only from end_job(), and every script calls that only for a "
          "job that is not terminal yet (is_terminal first), so a job is never settled twice "
          "through any script; the 'settled' guard is a second line of defence"),
    Fault("settle-refunds-an-unlimited-key", "shared/lua/_settle.lua",
          "if refund > 0 and redis.call('HGET', k.job, 'unlimited') ~= '1' then",
          "if refund > 0 then", BILLING),
    Fault("settle-free-images-charged", "shared/lua/_settle.lua",
          "local spent = math.max(0, delivered - free) * unit", "local spent = delivered * unit",
          ("tests/test_limits.py",)),
    Fault("settle-nothing-given-back", "shared/lua/_settle.lua",
          "    if keys[i] == key then", "    if false then", ("tests/test_limits.py",)),
    Fault("settle-key-not-named-for-the-sink", "shared/lua/_settle.lua",
          "  redis.call('SADD', k.pending, redis.call('HGET', k.job, 'key_id'))\n", "",
          BILLING),
    Fault("release-idempotency-of-another-job", "shared/lua/release_idempotency.lua",
          "if redis.call('GET', KEYS[1]) == a.value then", "if true then", BILLING),
    # -- shared/jobs.py and its scripts (job_*.lua, _terminal.lua)
    Fault("claim-takes-a-live-workers-job", "shared/lua/job_claim.lua",
          "  if beat and tonumber(beat) > tonumber(now) then return {'busy'} end\n", "", JOBS),
    Fault("claim-runs-past-the-deadline", "shared/lua/job_claim.lua",
          "if tonumber(now) >= deadline then", "if false then", JOBS),
    Fault("claim-no-new-attempt", "shared/lua/job_claim.lua",
          "local attempt = redis.call('HINCRBY', k.job, 'attempt', 1)",
          "local attempt = redis.call('HGET', k.job, 'attempt') or 0", JOBS),
    Fault("finish-without-the-fence", "shared/lua/job_finish.lua",
          "if a.attempt ~= '' and redis.call('HGET', k.job, 'attempt') ~= a.attempt then return 0 end",
          "", JOBS),
    Fault("finish-a-terminal-job-again", "shared/lua/job_finish.lua",
          "if not st or is_terminal(st) then return 0 end", "if not st then return 0 end", JOBS),
    Fault("expire-before-the-deadline", "shared/lua/job_finish.lua",
          "if a.overdue_only and tonumber(now) < tonumber(redis.call('HGET', k.job, 'deadline')) then",
          "if false then", JOBS),
    Fault("handoff-without-the-fence", "shared/lua/job_handoff.lua",
          "if redis.call('HGET', KEYS[1], 'attempt') ~= a.attempt then return 0 end", "", JOBS),
    Fault("reap-takeover-without-a-new-attempt", "shared/lua/job_reap.lua",
          "  local attempt = redis.call('HINCRBY', k.job, 'attempt', 1)",
          "  local attempt = redis.call('HGET', k.job, 'attempt')", JOBS),
    Fault("reap-sends-once-more-than-max", "shared/lua/job_reap.lua",
          ">= tonumber(a.max_sends) then", "> tonumber(a.max_sends) then", JOBS),
    Fault("reap-never-times-out", "shared/lua/job_reap.lua",
          "if tonumber(now) >= deadline then", "if false then", JOBS),
    Fault("beat-for-a-lost-attempt", "shared/lua/job_beat.lua",
          "if f[1] == 'running' and f[2] == a.attempts[i - 1] then", "if f[1] == 'running' then",
          JOBS),
    Fault("beat-past-the-deadline", "shared/lua/job_beat.lua",
          "local at = math.min(now + tonumber(a.stale_after), tonumber(f[3]) + tonumber(a.late))",
          "local at = now + tonumber(a.stale_after)", JOBS),
    Fault("sent-counts-a-running-job", "shared/lua/job_sent.lua",
          "if f[1] ~= 'queued' then return 0 end", "", JOBS),
    Fault("terminal-stays-watched", "shared/lua/_terminal.lua",
          "  redis.call('ZREM', k.watch, id)\n", "", JOBS),
    Fault("terminal-webhook-never-due", "shared/lua/_terminal.lua",
          "    redis.call('ZADD', k.webhooks_due, tonumber(now), id)\n", "", JOBS),
    Fault("terminal-not-published", "shared/lua/_terminal.lua",
          "  redis.call('PUBLISH', channel, id)\n", "", JOBS),
    Fault("jobs-record-outlives-nothing-of-its-budget", "shared/jobs.py",
          "return self._retention + int(max(0.0, job.deadline - job.created))",
          "return self._retention", JOBS),
    # -- shared/netguard.py
    Fault("netguard-resolved-private-addresses-pass", "shared/netguard.py",
          "    for address in addresses:\n        reason = _non_public_reason(address)",
          "    for address in addresses[:0]:\n        reason = _non_public_reason(address)",
          NETGUARD),
    Fault("netguard-credentials-in-url-pass", "shared/netguard.py",
          '    if "@" in parts.netloc:\n        raise _Refused("the URL must not contain credentials',
          '    if False:\n        raise _Refused("the URL must not contain credentials', NETGUARD),
    Fault("netguard-http-always-allowed", "shared/netguard.py",
          'if scheme == "http" and not policy.allow_http:', "if False:", NETGUARD),
    Fault("netguard-allow-list-ignores-ports", "shared/netguard.py",
          "if entry_port is not None and entry_port != port:", "if False:", NETGUARD),
    Fault("netguard-numeric-ipv4-forms-pass", "shared/netguard.py",
          "        if _looks_numeric_ipv4(host):", "        if False:", NETGUARD),
    Fault("netguard-ipv4-mapped-not-unwrapped", "shared/netguard.py",
          "    if ip.ipv4_mapped is not None:\n        return ip.ipv4_mapped",
          "    if False:\n        return ip.ipv4_mapped", NETGUARD),
    Fault("netguard-no-url-length-limit", "shared/netguard.py",
          "    if len(url) > MAX_URL_LENGTH:", "    if False:", NETGUARD),
    Fault("netguard-localhost-name-passes", "shared/netguard.py",
          'if name == "localhost" or name.endswith(".localhost"):', "if False:", NETGUARD),
    # -- shared/sizing.py
    Fault("sizing-area-band-not-clamped", "shared/sizing.py",
          "area = min(max(wf * hf, float(self.min_pixels)), float(self.max_pixels))",
          "area = wf * hf", SIZING),
    Fault("sizing-fixed-list-farthest", "shared/sizing.py",
          "return min(enumerate(self.sizes), key=key)[1]",
          "return max(enumerate(self.sizes), key=key)[1]", SIZING),
    Fault("sizing-range-one-multiple-too-far", "shared/sizing.py",
          "    k_hi = h_bounds[1] // multiple", "    k_hi = h_bounds[1] // multiple + 1", SIZING),
    Fault("sizing-no-max-side-on-parse", "shared/sizing.py",
          "if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):",
          "if not (1 <= width and 1 <= height):", SIZING),
    Fault("sizing-area-band-ratio-unchecked", "shared/sizing.py",
          "            and self.min_ratio * h <= w <= self.max_ratio * h", "", SIZING),
    Fault("sizing-max-side-never-scales-up", "shared/sizing.py",
          "scale = min(max(1.0, self.lo / short_side), upper)", "scale = min(1.0, upper)", SIZING),
    # -- workers/liveness.py
    Fault("liveness-no-pause-after-an-outage", "workers/liveness.py",
          "            if now - self._connected_since < stale_after:", "            if False:",
          LIVENESS),
    Fault("liveness-sends-not-counted", "workers/liveness.py",
          "            jobs.mark_sent(job_id)\n", "", LIVENESS),
    Fault("liveness-requeued-jobs-not-sent", "workers/liveness.py",
          'if action in ("takeover", "requeue"):', 'if action == "takeover":', LIVENESS),
    Fault("liveness-heartbeat-beats-nothing", "workers/liveness.py",
          "                self._jobs.beat(running)", "                self._jobs.beat({})",
          LIVENESS),
    Fault("liveness-a-finished-attempt-untracks-a-newer-one", "workers/liveness.py",
          "                if self._jobs.get(job_id) == attempt:", "                if True:",
          LIVENESS),
    # -- workers/webhooks.py
    Fault("webhooks-signature-without-the-last-dot", "workers/webhooks.py",
          'f"{msg_id}.{timestamp}.".encode()', 'f"{msg_id}.{timestamp}".encode()', WEBHOOKS),
    Fault("webhooks-retry-after-ignored", "workers/webhooks.py",
          "delay = max(schedule[number - 1], retry_after or 0.0)",
          "delay = schedule[number - 1]", WEBHOOKS),
    Fault("webhooks-410-does-not-stop", "workers/webhooks.py",
          "        if response.status_code == 410:", "        if False:", WEBHOOKS),
    Fault("webhooks-one-retry-too-many", "workers/webhooks.py",
          "        if number > len(schedule):", "        if number > len(schedule) + 1:",
          WEBHOOKS),
    Fault("webhooks-no-wall-clock", "workers/webhooks.py",
          "            wall_clock(time.time() + timeout),", "            wall_clock(time.time() + 3600),",
          WEBHOOKS),
    Fault("webhooks-stale-lease-delivers", "workers/webhooks.py",
          "        if not claim([WEBHOOKS_DUE, inflight], job_id=job_id, token=lease, renewed=renewed):",
          "        if False:", WEBHOOKS),
    Fault("webhooks-in-flight-place-never-freed", "workers/webhooks.py",
          "        client.zrem(inflight, job_id)", "        pass", WEBHOOKS),
    Fault("webhooks-delivered-again", "workers/webhooks.py",
          'if state.get("state") in ("delivered", "failed", "disabled"):',
          'if state.get("state") in ("failed", "disabled"):', WEBHOOKS),
    # -- workers/http.py
    Fault("http-retry-after-ignored", "workers/http.py",
          "delay = hinted if hinted is not None else backoff * (0.5 + random.random() / 2)",
          "delay = backoff * (0.5 + random.random() / 2)", HTTP),
    Fault("http-waits-past-the-deadline", "workers/http.py",
          "        if delay >= self.remaining() - _MIN_USEFUL_SECONDS:", "        if False:", HTTP),
    Fault("http-429-not-retried", "workers/http.py",
          "RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})",
          "RETRY_STATUSES = frozenset({408, 409, 425, 500, 502, 503, 504})", HTTP),
    Fault("http-answer-without-wall-clock", "workers/http.py",
          "        with wall_clock(self._attempt_limit()):\n            response = session.request(",
          "        with contextlib.nullcontext():\n            response = session.request(", HTTP),
    Fault("http-download-without-wall-clock", "workers/http.py",
          "            with wall_clock(self._attempt_limit()):\n                return self._stream(",
          "            with contextlib.nullcontext():\n                return self._stream(", HTTP),
    Fault("http-credentials-follow-a-redirect", "workers/http.py",
          "                    if urlsplit(target).netloc != urlsplit(url).netloc:",
          "                    if False:", HTTP),
    Fault("http-one-redirect-too-many", "workers/http.py",
          "        for _ in range(MAX_REDIRECTS + 1):", "        for _ in range(MAX_REDIRECTS + 2):",
          HTTP),
    Fault("http-declared-oversize-download-read", "workers/http.py",
          "if declared and declared.isdigit() and int(declared) > max_bytes:", "if False:", HTTP),
    Fault("http-echoed-key-not-redacted", "workers/http.py",
          "            text = text.replace(secret, REDACTED)", "            pass", HTTP),
    Fault("http-timeouts-not-retried", "workers/http.py",
          "(RetryableStatus, requests.ConnectionError, requests.Timeout)",
          "(RetryableStatus, requests.ConnectionError)", HTTP),
]  # fmt: skip


def committed(path: str) -> str | None:
    """``path`` as HEAD has it (what a run mutates), or None if HEAD has no such file."""
    shown = subprocess.run(
        ["git", "show", f"HEAD:{path}"], cwd=REPO, capture_output=True, text=True, check=False
    )
    return shown.stdout if shown.returncode == 0 else None


def check_faults(faults: list[Fault]) -> list[str]:
    """Problems with the list: a fault whose original text HEAD does not hold exactly once."""
    problems = []
    ids = [f.id for f in faults]
    problems += [f"duplicate fault id {i!r}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    for fault in faults:
        text = committed(fault.path)
        if text is None:
            problems.append(f"{fault.id}: {fault.path} does not exist")
            continue
        count = text.count(fault.original)
        if count != 1:
            problems.append(
                f"{fault.id}: its original text occurs {count} times in {fault.path} (needs 1)"
            )
    return problems


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float]:
    """("passed" | "failed" | "error" | "timeout", seconds) of the tests in ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    argv = ["nice", "-n", "19", sys.executable, "-m", "pytest", "-q", "-x",
            "-p", "no:cacheprovider", "-p", "no:randomly", *tests]  # fmt: skip
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started
    took = time.monotonic() - started
    outcome = {0: "passed", 1: "failed"}.get(done.returncode, "error")
    if outcome == "error":
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-2000:])
    return outcome, took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-k",
        dest="match",
        default="",
        help="only faults whose id or path has one of these (comma-separated)",
    )
    parser.add_argument("--list", action="store_true", help="list the faults and check them")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per fault's tests")
    args = parser.parse_args()

    wanted = [m for m in args.match.split(",") if m] or [""]
    faults = [f for f in FAULTS if any(m in f.id or m in f.path for m in wanted)]
    problems = check_faults(FAULTS)
    if problems:
        print("the fault list no longer matches the code at HEAD:", *problems, sep="\n  ")
        return 2
    if args.list:
        for f in faults:
            print(f"{f.id:50} {f.path:28} {' '.join(f.tests)}")
        return 0

    tree = Path(tempfile.mkdtemp(prefix="imagegate-mutants-"))
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(tree), "HEAD"],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    results: list[tuple[Fault, str, float]] = []
    try:
        baseline: dict[tuple[str, ...], str] = {}
        for fault in faults:
            if fault.tests not in baseline:
                baseline[fault.tests], took = run_tests(tree, fault.tests, args.timeout)
                print(f"baseline {' '.join(fault.tests)}: {baseline[fault.tests]} ({took:.0f} s)")
            if baseline[fault.tests] != "passed":
                results.append((fault, "baseline-failed", 0.0))
                continue
            path = tree / fault.path
            original = path.read_text()
            path.write_text(original.replace(fault.original, fault.replacement, 1))
            try:
                outcome, took = run_tests(tree, fault.tests, args.timeout)
            finally:
                path.write_text(original)
            verdict = {
                "failed": "killed",
                "passed": "equivalent" if fault.equivalent else "SURVIVED",
                "timeout": "killed (timeout)",
            }.get(outcome, "error")
            results.append((fault, verdict, took))
            print(f"{verdict:16} {fault.id} ({took:.0f} s)", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)
        shutil.rmtree(tree, ignore_errors=True)

    killed = sum(1 for _, v, _ in results if v.startswith("killed"))
    survived = [f.id for f, v, _ in results if v == "SURVIVED"]
    equivalent = [f for f, v, _ in results if v == "equivalent"]
    broken = [f.id for f, v, _ in results if v in ("error", "baseline-failed")]
    print(f"\nmutation score: {killed}/{len(results)} killed", end="")
    print(f"; survived: {', '.join(survived)}" if survived else "", end="")
    print(f"; errors: {', '.join(broken)}" if broken else "", end="")
    print(f"; equivalent: {', '.join(f.id for f in equivalent)}" if equivalent else "")
    for fault in equivalent:
        print(f"  {fault.id}: {fault.equivalent}")
    return 1 if survived or broken else 0


if __name__ == "__main__":
    sys.exit(main())
