"""The chat page at `/`, driven in headless Chromium: type a question, see the thinking and the answer.

Playwright drives the system Chromium (`/usr/bin/chromium`, Debian's package, installed
by CI); no browser is downloaded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import openai
import pytest
from playwright.sync_api import expect, sync_playwright

from ponder.serve.service import ServeConfig
from serve_fixtures import KEY, RunningServer

CHROMIUM = os.environ.get("PONDER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
QUESTION = "3779+1029=?"
SHOT = os.environ.get("PONDER_SERVE_SCREENSHOT")  # e.g. docs/serve.png: also save a screenshot there


def thinking_seed(url: str) -> int:
    """A seed on which the built-in base thinks about QUESTION at effort high (about one in five do)."""
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    for seed in range(64):
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}],
                                           seed=seed, reasoning_effort="high", max_completion_tokens=128)
        if r.usage.completion_tokens_details.reasoning_tokens >= 8:
            return seed
    raise AssertionError("no seed in 0..63 makes the base think")


@pytest.mark.slow
def test_chat_page_shows_thinking_and_answer(tmp_path: Path):
    assert Path(CHROMIUM).exists(), f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    with RunningServer(ServeConfig(api_key=KEY)) as server, sync_playwright() as pw:
        seed = thinking_seed(server.url)
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 640})
            page.goto(server.url + "/")
            expect(page.locator("#model")).to_have_text("model: tiny")
            page.fill("#key", KEY)  # the server wants a key: the page asks for it
            page.select_option("#effort", "high")
            page.fill("#seed", str(seed))
            page.fill("#input", QUESTION)
            page.keyboard.press("Enter")
            turn = page.locator(".msg.assistant").last
            expect(turn.locator(".meta")).to_contain_text("reasoning", timeout=30_000)  # usage arrived: done
            answer = turn.locator(".answer").inner_text()
            thinking = turn.locator("details.thinking pre").text_content()  # collapsed: not rendered
            assert answer.strip() and thinking.strip()
            assert "<think>" not in answer and "</think>" not in thinking
            expect(turn.locator("details.thinking summary")).to_contain_text("Thinking (")
            # the thinking block collapses when the answer starts, and opens on a click
            assert not turn.locator("details.thinking").evaluate("d => d.open")
            turn.locator("details.thinking summary").click()
            assert turn.locator("details.thinking").evaluate("d => d.open")
            page.select_option("#effort", "none")  # effort none: no thinking block at all
            page.fill("#input", QUESTION)
            page.keyboard.press("Enter")
            second = page.locator(".msg.assistant").nth(1)
            expect(second.locator(".meta")).to_contain_text("reasoning 0", timeout=30_000)
            assert second.locator(".answer").inner_text().strip()
            assert second.locator("details.thinking").is_hidden()
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
            if SHOT:
                Path(SHOT).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=SHOT, full_page=True)
        finally:
            browser.close()
