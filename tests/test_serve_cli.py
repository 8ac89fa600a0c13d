"""`ponder serve` as its own process: start, answer both APIs, refuse bad flags, stop."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import anthropic
import openai
import pytest

try:  # the HTTP client the openai and anthropic clients are built on (httpx2 in newer ones)
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_flags_fail_at_once_naming_the_valid_values():
    r = subprocess.run([sys.executable, "-m", "ponder.cli", "serve", "tiny", "--reasoning", "loud"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "reasoning" in r.stderr and "visible, hidden, summary" in r.stderr
    r = subprocess.run([sys.executable, "-m", "ponder.cli", "serve", "tiny", "--max-batch", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "max_batch" in r.stderr and ">= 1" in r.stderr


@pytest.mark.slow
def test_serve_process_answers_openai_and_anthropic_clients_then_stops():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "ponder.cli", "serve", "tiny", "--port", str(port),
                             "--api-key", "k-1", "--threads", "1", "--max-batch", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        assert httpx.get(url + "/v1/models").status_code == 401
        oai = openai.OpenAI(base_url=url + "/v1", api_key="k-1", max_retries=0)
        r = oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "3779+1029=?"}],
                                        reasoning_effort="low", seed=1)
        assert r.choices[0].message.content and r.usage.completion_tokens_details.reasoning_tokens <= 16
        claude = anthropic.Anthropic(base_url=url, api_key="k-1", max_retries=0)
        with claude.messages.stream(model="tiny", max_tokens=64, messages=[{"role": "user", "content": "12+34=?"}],
                                    thinking={"type": "enabled", "budget_tokens": 16}) as stream:
            text = "".join(stream.text_stream)
        assert text
        kids = children(proc.pid)
        assert kids  # the engine runs in a process of its own
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode is not None
    deadline = time.monotonic() + 30
    while any(alive(k) for k in kids):  # the server's processes leave with it
        assert time.monotonic() < deadline, [k for k in kids if alive(k)]
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    return [int(c) for t in os.listdir(f"/proc/{pid}/task") for c in open(f"/proc/{pid}/task/{t}/children").read().split()]


def alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
