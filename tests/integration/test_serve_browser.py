"""The server's web page in headless Chromium, driven as a user would: key, prompt, settings, a click, the result."""

from __future__ import annotations

import json

import pytest
from browser import ARTIFACTS, needs_chromium
from serve_client import ServerProcess

pytestmark = [pytest.mark.slow, needs_chromium]

KEY = "page-test-key"
PROMPT = """<img src=x onerror="document.title='pwned'"> rain & "thunder" </b>"""  # must show as text


def test_the_page_generates_plays_and_shows_errors(tmp_path):
    from cdp import Browser

    server = ServerProcess([f"output.dir={tmp_path / 'out'}"], cwd=tmp_path, api_key=KEY)
    browser = None
    try:
        server.wait_ready()
        browser = Browser()
        browser.goto(server.url + "/")
        browser.wait_for("document.getElementById('keybox').style.display === 'block'")  # /v1/options said 401
        browser.type_into("#api_key", KEY)
        browser.click("#prompt")  # leaving the key field loads the options with the key
        browser.wait_for("document.body.dataset.ready === '1'")
        assert browser.evaluate("document.getElementById('steps').value") == "2"  # defaults from /v1/options

        browser.type_into("#prompt", PROMPT)
        browser.type_into("#negative_prompt", "hiss")
        browser.type_into("#seed", "11")
        browser.click("#generate")
        audio = "document.querySelector('#history audio')"
        image = "document.querySelector('#history .candidate img')"
        browser.wait_for(f"{audio} && {audio}.dataset.duration && {image} && {image}.dataset.loaded", timeout=180)
        assert abs(float(browser.evaluate(f"{audio}.dataset.duration")) - 0.32) < 0.01
        assert browser.evaluate(f"{audio}.src").startswith("blob:") and browser.evaluate(f"{audio}.error") is None
        assert browser.evaluate(f"{audio}.play().then(() => true)") is True  # playable
        assert int(browser.evaluate(f"{image}.dataset.loaded")) > 100  # the spectrogram's width in pixels
        assert browser.evaluate("document.querySelector('#history .prompt').textContent") == PROMPT
        assert browser.evaluate("document.querySelectorAll('img[src=\"x\"], b').length") == 0  # escaped, not markup
        assert browser.evaluate("document.title") != "pwned"
        settings = browser.evaluate("document.querySelector('#history .entry').textContent")
        assert "seed 11" in settings and "negative: hiss" in settings and "dpmpp_2m × 2" in settings
        assert browser.evaluate("document.querySelector('#history a[download]').download").endswith(".wav")

        browser.type_into("#steps", "0")
        browser.click("#generate")
        error = browser.wait_for("document.getElementById('error').textContent")
        assert (
            error.startswith("steps: ")
            and browser.evaluate("document.getElementById('error').dataset.field") == "steps"
        )
        assert browser.evaluate("document.getElementById('steps').classList.contains('invalid')") is True
        assert browser.evaluate("document.querySelectorAll('#history .entry').length") == 1  # nothing more was made
        shot = browser.screenshot(ARTIFACTS / "serve-page.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        print(json.dumps({"screenshot": str(shot), "error shown": error}))
    finally:
        if browser is not None:
            browser.close()
        server.stop()
