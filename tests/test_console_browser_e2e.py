"""The operator console in a real browser (Debian's Chromium, driven by Playwright)
against the live stack: gunicorn, Celery workers, Redis.

An operator signs in with an admin key (only an HttpOnly, SameSite=Strict cookie is
kept: the key is in no storage of the page), creates a key whose name is markup (it
shows as text), tops it up, the customer generates with ``local/testcard`` and a
priced model through the official ``openai`` client, and the operator finds the job
and opens its timeline, sees the charts of the overview and of usage drawn with data,
and looks at models and workers. The main flow also works with the keyboard alone. A
write without the CSRF token, and a cross-site one, are refused. A screenshot of each
page goes to the artifacts folder (tests/support/browser.py).
"""

from __future__ import annotations

import json
import re

import pytest
import requests
from openai import OpenAI
from playwright.sync_api import Page, expect

from tests.conftest import cli
from tests.support.browser import Tab

HOSTILE = '<img src=x onerror="window.__pwned=1"><b>acme</b> & "co"'

# Pixels of a chart's canvas in a series colour (saturated, unlike axes, text and grid).
SATURATED = """(sel) => {
  const canvas = document.querySelector(sel + ' canvas');
  const {data} = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    const max = Math.max(data[i], data[i + 1], data[i + 2]);
    const min = Math.min(data[i], data[i + 1], data[i + 2]);
    if (data[i + 3] > 200 && max - min > 80) n++;
  }
  return n;
}"""


def _drawn(page: Page, selector: str) -> None:
    """Wait until the chart's canvas holds series colour (a loaded machine may paint late)."""
    page.wait_for_function(f"(sel) => ({SATURATED})(sel) > 20", arg=selector)


@pytest.fixture(scope="module")
def admin_key(stack_env: dict[str, str]) -> str:
    out = cli(stack_env, "admin-keys", "create", "--name", "console", "--scope", "write", "--json")
    return json.loads(out)["key"]


def _sign_in(page: Page, gateway: str, key: str) -> None:
    page.goto(f"{gateway}/console")
    expect(page.locator("#signin")).to_be_visible()
    page.fill("#admin-key", key)
    page.click("#sign-in")
    expect(page.locator("#app")).to_be_visible()


def _page(page: Page, name: str) -> None:
    page.click(f'nav button[data-page="{name}"]')
    expect(page.locator(f"#page-{name}")).to_be_visible()


def _row(page: Page, table: str, text: str):
    return page.locator(f"#{table} tbody tr", has_text=text)


def test_an_operator_runs_a_customer_from_the_console(
    tab: Tab, gateway: str, admin_key: str
) -> None:
    page = tab.page
    page.goto(f"{gateway}/console")
    page.fill("#admin-key", "iga-not-a-key")
    page.click("#sign-in")
    expect(page.locator("#signin-error")).to_contain_text("401 authentication_error")
    tab.errors.clear()  # the refused sign-in's 401 is logged by the browser, as it should be

    _sign_in(page, gateway, admin_key)
    expect(page.locator("#who-name")).to_have_text("console")
    [cookie] = page.context.cookies()
    assert (
        cookie["httpOnly"] and cookie["sameSite"] == "Strict" and admin_key not in cookie["value"]
    )
    stored = page.evaluate("JSON.stringify([{...sessionStorage}, {...localStorage}])")
    assert admin_key not in stored and page.evaluate("document.cookie") == ""

    # A key whose name is markup: created, shown as text, topped up.
    _page(page, "keys")
    page.fill("#new-name", HOSTILE)
    page.fill("#new-tier", "test-billing")
    page.click("#create-key")
    expect(page.locator("#created-key")).to_contain_text("ig-")
    customer = page.locator("#created-key").inner_text()
    key_id = page.locator("#created").get_attribute("data-id")
    row = _row(page, "keys-table", key_id)
    expect(row.locator("td").nth(1)).to_have_text(HOSTILE)
    expect(row.locator("td").nth(3)).to_have_text("0.000000")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#keys-table img, #keys-table b").count() == 0
    expect(page.locator("#edit-name")).to_have_text(HOSTILE)
    page.fill("#topup-amount", "0.50")
    page.fill("#topup-reason", "invoice <script>1</script>")
    page.click("#topup")
    expect(row.locator("td").nth(3)).to_have_text("0.500000")
    tab.screenshot("keys")

    # The customer generates: the test card, and a priced model (spend to chart).
    client = OpenAI(api_key=customer, base_url=f"{gateway}/v1", max_retries=0, timeout=60)
    card = client.images.generate(model="local/testcard", prompt=HOSTILE, size="256x256")
    priced = client.images.generate(model="test/priced-card", prompt="priced", size="256x256")
    assert card.data and priced.data

    # Jobs: search the key's jobs, open the test card's timeline.
    _page(page, "jobs")
    page.fill("#job-key", key_id)
    page.fill("#job-model", "local/testcard")
    page.click("#job-search-go")
    expect(page.locator("#jobs-table tbody tr")).to_have_count(1)
    page.locator("#jobs-table tbody button").click()
    events = page.locator("#timeline li")
    expect(events.first).to_have_attribute("data-event", "admitted")
    for event in ("queued", "claimed", "stored", "succeeded", "settled"):
        expect(page.locator(f'#timeline li[data-event="{event}"]')).to_have_count(1)
    expect(page.locator("#job-prompt")).to_have_text(HOSTILE)
    assert page.evaluate("window.__pwned") is None
    tab.screenshot("job-timeline")

    # Overview: images per minute, error rate and latency drawn with this minute's jobs.
    _page(page, "overview")
    page.click("#overview-refresh")
    for chart in ("#chart-images", "#chart-latency"):
        page.wait_for_function(
            "(s) => Number(document.querySelector(s).dataset.points) > 0", arg=chart
        )
        _drawn(page, chart)
    expect(page.locator("#chart-errors")).not_to_have_attribute("data-series", "0")
    tab.screenshot("overview")
    page.select_option("#window", "day")
    page.wait_for_function(
        "() => Number(document.querySelector('#chart-images').dataset.points) > 0"
    )
    _drawn(page, "#chart-images")

    # Usage: the key's spend per key and per model, as bars.
    _page(page, "usage")
    page.fill("#usage-key", key_id)
    page.click("#usage-refresh")
    # this key's row (the table shows every key's until the filtered answer has come)
    mine = _row(page, "usage-table", key_id).filter(has_text="test/priced-card")
    expect(mine).to_contain_text("0.010000")
    page.wait_for_function(
        "() => Number(document.querySelector('#chart-spend-model').dataset.points) > 0"
    )
    _drawn(page, "#chart-spend-model")
    _drawn(page, "#chart-spend-key")
    tab.screenshot("usage")

    _page(page, "models")
    first_cell = page.locator("td:first-child", has_text=re.compile(r"^local/testcard$"))
    expect(page.locator("#models-table tbody tr", has=first_cell)).to_contain_text("closed")
    tab.screenshot("models")
    _page(page, "workers")
    local = page.locator("td:first-child", has_text=re.compile(r"^local$"))
    expect(page.locator("#workers-table tbody tr", has=local)).to_contain_text(
        re.compile(r"[1-9]\d*: ")
    )
    tab.screenshot("workers")

    # Change the tier, revoke: the customer's key stops working.
    _page(page, "keys")
    row.locator("button").click()
    page.fill("#edit-tier", "internal")
    page.click("#set-tier")
    expect(row.locator("td").nth(2)).to_have_text("internal")
    page.click("#revoke")
    expect(row.locator("td").nth(4)).to_have_text("revoked")
    with pytest.raises(Exception, match="revoked"):
        client.images.generate(model="local/testcard", prompt="x", size="256x256")
    assert tab.errors == []


def test_keyboard_only_and_writes_without_the_token_or_from_another_site(
    tab: Tab, gateway: str, admin_key: str
) -> None:
    page = tab.page
    page.goto(f"{gateway}/console")
    tab.tab_to("#admin-key")
    page.keyboard.type(admin_key)
    page.keyboard.press("Enter")
    expect(page.locator("#app")).to_be_visible()
    tab.tab_to('nav button[data-page="keys"]')
    page.keyboard.press("Enter")
    expect(page.locator("#page-keys")).to_be_visible()
    tab.tab_to("#new-name")
    page.keyboard.type("keyboard customer")
    page.keyboard.press("Enter")  # submits the form
    expect(page.locator("#created-key")).to_contain_text("ig-")
    key_id = page.locator("#created").get_attribute("data-id")
    # focus moves on to the top-up (after the key list is drawn again: wait for it). Not a
    # wait_for_function on an expression: Playwright polls an expression with eval(), which
    # the console's CSP refuses whenever the first look finds the focus not there yet.
    expect(page.locator("#topup-amount")).to_be_focused()
    page.keyboard.press("Control+A")
    page.keyboard.type("2.5")
    tab.tab_to("#topup")
    page.keyboard.press("Enter")
    expect(_row(page, "keys-table", key_id).locator("td").nth(3)).to_have_text("2.500000")
    tab.tab_to('nav button[data-page="jobs"]')
    page.keyboard.press("Enter")
    expect(page.locator("#page-jobs")).to_be_visible()
    tab.screenshot("keyboard")

    # The page's own origin, its cookie, but no CSRF token: refused.
    answer = page.evaluate(
        """async () => {
          const r = await fetch('/admin/v1/keys', {method: 'POST', credentials: 'same-origin',
            headers: {'Content-Type': 'application/json'}, body: '{"name": "csrf"}'});
          return [r.status, (await r.json()).error.code];
        }"""
    )
    assert answer == [403, "csrf_token_invalid"]
    # The cookie and the token, sent as a cross-site request: refused before anything else.
    session = page.evaluate("fetch('/console/session').then((r) => r.json())")
    [cookie] = page.context.cookies()
    cross = requests.post(
        f"{gateway}/admin/v1/keys",
        json={"name": "cross"},
        cookies={cookie["name"]: cookie["value"]},
        headers={
            "X-CSRF-Token": session["csrf_token"],
            "Sec-Fetch-Site": "cross-site",
            "Origin": "https://evil.example",
        },  # fmt: skip
        timeout=30,
    )
    assert cross.status_code == 403
    assert cross.json()["error"]["code"] == "cross_site_request_refused"
    tab.errors.clear()  # the refused fetch is logged by the browser, as it should be

    tab.tab_to("#sign-out")
    page.keyboard.press("Enter")
    expect(page.locator("#signin")).to_be_visible()
    gone = requests.get(
        f"{gateway}/admin/v1/me", cookies={cookie["name"]: cookie["value"]}, timeout=30
    )
    assert gone.status_code == 401
    assert tab.errors == []
