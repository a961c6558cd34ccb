"""The playground in a real browser (Debian's Chromium, driven by Playwright) against the
live stack: gunicorn, Celery workers, Redis.

A customer signs in with a key, generates with ``local/testcard`` (streamed: the
completed image shows), with reference images (the edits endpoint), and with a priced
model (the price charged and the new balance show); every image must really have
rendered (``naturalWidth``). The main flow works with the keyboard alone. The code the
page offers is run as it is shown (curl and Python against the stack; Node is
syntax-checked), with a prompt written to break quoting and markup. Screenshots go to
the artifacts folder (tests/support/browser.py).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import requests
from PIL import Image
from playwright.sync_api import Page, expect

from tests.conftest import create_key
from tests.support.browser import Tab
from tests.support.sim import fault, tagged

# Quotes, shell expansion and markup: each must stay text in the page and in the code.
HOSTILE = (
    'a "fox" it\'s <img src=x onerror="window.__pwned=1"> $(touch pwned) `touch pwned2` </pre>'
)
KEY_STORAGE = "imagegate.apiKey"


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(out, "PNG")
    return out.getvalue()


def _sign_in(page: Page, gateway: str, key: str) -> None:
    page.goto(f"{gateway}/playground")
    page.fill("#api-key", key)
    page.click("#sign-in")
    expect(page.locator("#app")).to_be_visible()


def _rendered(page: Page, count: int) -> list[dict[str, int | str]]:
    """Waits for ``count`` completed images and returns their natural sizes and sources."""
    images = page.locator('figure.result[data-state="complete"] img')
    expect(images).to_have_count(count)
    page.wait_for_function(
        "(n) => [...document.querySelectorAll('figure.result img')]"
        ".filter((i) => i.complete && i.naturalWidth > 0).length === n",
        arg=count,
    )
    return images.evaluate_all(
        "(imgs) => imgs.map((i) => ({width: i.naturalWidth, height: i.naturalHeight, src: i.src}))"
    )


def _details(page: Page, field: str) -> list[str]:
    return page.locator(f'figure.result dd[data-field="{field}"]').all_inner_texts()


def _code(page: Page, lang: str) -> str:
    page.click(f'#code-langs button[data-lang="{lang}"]')
    expect(page.locator(f'#code-langs button[data-lang="{lang}"]')).to_have_attribute(
        "aria-pressed", "true"
    )
    return page.locator("#code-text").inner_text()


def _run(argv: list[str], key: str, cwd: Path) -> str:
    env = {"PATH": "/usr/bin:/bin", "IMAGEGATE_API_KEY": key, "HOME": str(cwd)}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _gateway_log(run_dir: Path, gateway: str) -> str:
    return (run_dir / f"web-{urlsplit(gateway).port}.log").read_text(errors="replace")


def test_sign_in_stream_the_test_card_and_edit_with_a_reference(
    tab: Tab, gateway: str, stack_env: dict[str, str], run_dir: Path, tmp_path: Path
) -> None:
    page = tab.page
    key = create_key(stack_env, "playground-stream", tier="test-billing", balance="1.00")["key"]

    page.goto(f"{gateway}/playground")
    page.fill("#api-key", "ig-not-a-key")
    page.click("#sign-in")
    expect(page.locator("#signin-error")).to_contain_text("401 authentication_error")
    assert page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") is None
    tab.errors.clear()  # the refused sign-in's 401 is logged by the browser, as it should be

    page.fill("#api-key", key)
    page.click("#sign-in")
    expect(page.locator("#app")).to_be_visible()
    assert page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") == key
    expect(page.locator("#account-tier")).to_have_text("test-billing")
    expect(page.locator("#account-balance")).to_have_text("1.000000")
    virtual = page.locator('#model option[value="test/virtual"]')
    expect(virtual).to_contain_text("0.02 per image")
    expect(virtual).to_contain_text("(virtual)")
    expect(page.locator("#model")).to_have_value("local/testcard")
    expect(page.locator("#model-info")).to_contain_text("Your tier: no per-model limit.")
    tab.screenshot("signed-in")

    # Streamed: the answer is Server-Sent Events and the completed image shows.
    page.fill("#prompt", "a streamed test card")
    page.select_option("#size", "256x256")
    expect(page.locator("#stream")).to_be_checked()
    with page.expect_response(lambda r: r.url.endswith("/v1/images/generations")) as answer:
        page.click("#generate")
    assert answer.value.headers["content-type"].startswith("text/event-stream")
    [image] = _rendered(page, 1)
    assert (image["width"], image["height"]) == (256, 256)
    assert str(image["src"]).startswith("data:image/png;base64,")
    expect(page.locator('dd[data-field="served_by"]')).to_have_text("local/testcard")
    assert _details(page, "size") == ["256x256"]
    assert _details(page, "charged") == ["0.000000"]
    assert _details(page, "time")[0].endswith(" s")
    assert _details(page, "job")[0].startswith("imgjob_")
    expect(page.locator("#status")).to_contain_text("1 image in")
    tab.screenshot("streamed")

    # With a reference image the same form goes to the edits endpoint, streamed too.
    (tmp_path / "reference.png").write_bytes(_png(96, 64))
    page.set_input_files("#references", str(tmp_path / "reference.png"))
    with page.expect_response(lambda r: r.url.endswith("/v1/images/edits")) as answer:
        page.click("#generate")
    assert answer.value.headers["content-type"].startswith("text/event-stream")
    [image] = _rendered(page, 1)
    assert (image["width"], image["height"]) == (256, 256)
    curl = _code(page, "curl")
    assert "-F 'image[]=@reference.png'" in curl
    streamed = _run(["bash", "-c", curl], key, tmp_path)  # as shown, from the file's folder
    assert "event: image_edit.completed" in streamed
    python = _code(page, "python")
    assert 'image=[open("reference.png", "rb")]' in python and "stream=True" in python
    (tmp_path / "edit.py").write_text(python)
    assert _run([sys.executable, "edit.py"], key, tmp_path).split()[0] == "image-0.png"
    assert Image.open(tmp_path / "image-0.png").size == (256, 256)

    # The key went only in headers: in no URL the page loaded, nor in the gateway's log.
    assert tab.requests and not [url for url in tab.requests if key in url]
    assert key not in page.url
    assert key not in _gateway_log(run_dir, gateway)
    assert tab.errors == []


def test_keyboard_only_with_the_tiers_limits_shown(
    tab: Tab, gateway: str, stack_env: dict[str, str]
) -> None:
    page = tab.page
    key = create_key(stack_env, "playground-keys", tier="test-account", balance="1.00")["key"]
    page.goto(f"{gateway}/playground")
    tab.tab_to("#api-key")
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    expect(page.locator("#app")).to_be_visible()
    assert page.evaluate("document.activeElement.id") == "model"  # focus moves on
    # The key's limits: its tier's calls per minute, and each model's images.
    expect(page.locator("#account-limit")).to_contain_text("of 3 left")
    expect(page.locator("#model-info")).to_contain_text("Your tier: 1000 per minute, 1000 per day.")
    expect(page.locator("#account-all-models")).to_contain_text("2 models")

    page.keyboard.press("Home")  # a closed <select> changes with the keys alone
    assert page.locator("#model").input_value() != "local/testcard"
    for _ in range(40):  # arrow keys, not typeahead: no timing between key presses
        if page.locator("#model").input_value() == "local/testcard":
            break
        page.keyboard.press("ArrowDown")
    expect(page.locator("#model")).to_have_value("local/testcard")
    tab.tab_to("#prompt")
    page.keyboard.type("a card made with the keyboard")
    tab.tab_to("#size")
    page.keyboard.press("2")  # the first size starting with 2
    expect(page.locator("#size")).to_have_value("256x256")
    tab.tab_to("#stream")
    page.keyboard.press("Space")  # the JSON answer this time
    expect(page.locator("#stream")).not_to_be_checked()
    tab.tab_to("#generate")
    page.keyboard.press("Enter")
    [image] = _rendered(page, 1)
    assert (image["width"], image["height"]) == (256, 256)
    expect(page.locator('dd[data-field="served_by"]')).to_have_text("local/testcard")
    expect(page.locator("#account-window")).to_contain_text("left, resets in")

    tab.tab_to('#code-langs button[data-lang="python"]')
    page.keyboard.press("Space")
    expect(page.locator("#code-text")).to_contain_text("client.images.generate(")
    tab.tab_to("#sign-out")
    page.keyboard.press("Enter")
    expect(page.locator("#signin")).to_be_visible()
    assert page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") is None
    assert tab.errors == []


def test_price_balance_and_the_code_runs_as_shown(
    tab: Tab, gateway: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    page = tab.page
    key = create_key(stack_env, "playground-priced", tier="test-billing", balance="1.00")["key"]
    _sign_in(page, gateway, key)
    page.select_option("#model", "test/priced-card")
    page.select_option("#size", "256x256")
    page.fill("#n", "2")
    page.select_option("#response-format", "url")
    page.uncheck("#stream")
    page.fill("#prompt", HOSTILE)
    page.press("#prompt", "Control+Enter")  # the form's shortcut

    images = _rendered(page, 2)
    assert [(i["width"], i["height"]) for i in images] == [(256, 256)] * 2
    assert all(str(i["src"]).startswith(f"{gateway}/v1/files/") for i in images)
    assert _details(page, "charged") == ["0.010000", "0.010000"]
    assert _details(page, "served_by") == ["test/priced-card"] * 2
    expect(page.locator("#status")).to_contain_text("charged 0.020000")
    expect(page.locator("#account-balance")).to_have_text("0.980000")
    # The prompt stayed text: in the image's description, not as an element.
    assert HOSTILE in str(page.locator("figure.result img").first.get_attribute("alt"))
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.querySelectorAll('img:not(figure.result img)').length") == 0
    tab.screenshot("priced")

    # The same request as code, run as shown: each one is charged like the page's.
    curl = _code(page, "curl")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gateway)
    page.click("#copy-code")
    expect(page.locator("#copy-status")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == curl
    assert key not in curl and "$IMAGEGATE_API_KEY" in curl
    answer = json.loads(_run(["bash", "-c", curl], key, tmp_path))
    assert answer["model"] == "test/priced-card" and answer["size"] == "256x256"
    assert len(answer["data"]) == 2

    python = _code(page, "python")
    (tmp_path / "generate.py").write_text(python)
    urls = _run([sys.executable, "generate.py"], key, tmp_path).split()
    assert len(urls) == 2
    fetched = Image.open(io.BytesIO(requests.get(urls[0], timeout=10).content))
    assert fetched.size == (256, 256)
    assert not list(tmp_path.glob("pwned*")), "the prompt ran as a shell command"

    node = _code(page, "node")
    assert f'baseURL: "{gateway}/v1"' in node and json.dumps(HOSTILE) in node
    if shutil.which("node"):  # installed with the test packages; imports are not resolved
        (tmp_path / "generate.mjs").write_text(node)
        _run(["node", "--check", "generate.mjs"], key, tmp_path)

    page.click("#account-refresh")  # the code's two requests of 2 images were charged too
    expect(page.locator("#account-balance")).to_have_text("0.940000")
    assert tab.errors == []


def test_partial_images_then_the_image_and_a_failed_stream(
    tab: Tab, gateway: str, api_key: str
) -> None:
    """A GPT image model streams partial images first (the simulator paces them), then
    the image; an upstream failure mid-stream is an error shown, with no image left."""
    page = tab.page
    _sign_in(page, gateway, api_key)
    page.select_option("#model", "gpt-image-1")
    page.select_option("#quality", "low")
    page.select_option("#partial-images", "2")
    page.fill("#prompt", tagged("otter sim-pace=0.4"))
    page.click("#generate")
    expect(page.locator('figure.result[data-state="partial"]')).to_have_count(1)
    tab.screenshot("partial")
    [image] = _rendered(page, 1)
    assert (image["width"], image["height"]) == (1024, 1024)
    expect(page.locator("figure.result")).to_have_attribute("data-partials", "2")
    expect(page.locator('dd[data-field="served_by"]')).to_have_text("gpt-image-1")
    assert _details(page, "size") == ["1024x1024"]

    page.fill("#prompt", fault(500, 3))
    page.click("#generate")
    expect(page.locator("#error")).to_contain_text("502 upstream_error")
    expect(page.locator("figure.result")).to_have_count(0)
    expect(page.locator("#generate")).to_be_enabled()

    # A base64 answer without streaming shows as a data: image too.
    page.select_option("#model", "local/testcard")
    page.select_option("#size", "256x256")
    page.select_option("#response-format", "b64_json")
    page.uncheck("#stream")
    page.fill("#prompt", "base64")
    page.click("#generate")
    [image] = _rendered(page, 1)
    assert str(image["src"]).startswith("data:image/png;base64,")
    data = base64.b64decode(str(image["src"]).split(",", 1)[1])
    assert Image.open(io.BytesIO(data)).size == (256, 256)
    assert tab.errors == []
