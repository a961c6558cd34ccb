"""shared/logs.py: what a line carries, and what it never carries."""

from __future__ import annotations

import io
import json
import logging

import pytest

from shared import logs

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    ("text", "kept", "cut"),
    [
        ("calling with Bearer sk-abcdefghijklmnop", "Bearer [redacted]", "abcdefghijklmnop"),
        ("key ig-Zx9_abcdefghijklmnopqrstu refused", "ig-[redacted]", "Zx9_abcdefghijklmn"),
        ("upstream said: invalid key sk-proj-abcdef123456", "sk-[redacted]", "abcdef123456"),
        ("replicate r8_ABCDEFGHIJKLMNOP", "r8_[redacted]", "ABCDEFGHIJKLMNOP"),
        ("secret whsec_QUJDREVGR0hJSktMTU5PUA==", "whsec_[redacted]", "QUJDREVGR0hJSktM"),
        (
            "fetch https://img.example/v1/files/a.png?sig=deadbeef&exp=1 failed",
            "https://img.example/v1/files/a.png?[query]",
            "deadbeef",
        ),
        ('headers {"Authorization": "Key abc:def123456"}', "Authorization", "def123456"),
    ],
)
def test_redact_cuts_credentials_and_url_queries(text: str, kept: str, cut: str) -> None:
    cleaned = logs.redact(text)
    assert kept in cleaned
    assert cut not in cleaned


def _json_logger() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    logger = logging.getLogger("imagegate.test.logs")
    logger.handlers[:] = [logs.handler("json", "worker", stream=out)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, out


def test_a_json_line_carries_its_context_and_extra_fields_and_no_secret() -> None:
    logger, out = _json_logger()
    with logs.log_context(job_id="imgjob_1", key_id="key_1", model="m", family="f", attempt=2):
        logger.info(
            "job %s failed calling %s",
            "imgjob_1",
            "https://up.example/x?token=s3cret",
            extra={"outcome": "failed", "duration_s": 1.5},
        )
    logger.info("outside")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "job imgjob_1 failed calling https://up.example/x?[query]"
    assert {k: first[k] for k in ("job_id", "key_id", "model", "family", "attempt")} == {
        "job_id": "imgjob_1",
        "key_id": "key_1",
        "model": "m",
        "family": "f",
        "attempt": 2,
    }
    assert first["outcome"] == "failed" and first["duration_s"] == 1.5
    assert first["role"] == "worker" and first["level"] == "INFO" and "time" in first
    assert "job_id" not in second  # the context ended with its block


def test_text_stays_the_default_for_people() -> None:
    out = io.StringIO()
    logger = logging.getLogger("imagegate.test.text")
    logger.handlers[:] = [logs.handler("text", stream=out)]
    logger.propagate = False
    logger.warning("plain %s", "words")
    assert out.getvalue().rstrip().endswith("WARNING imagegate.test.text: plain words")
