"""A real `ponder serve` on 127.0.0.1 for tests: uvicorn in a thread, on a socket bound to a free port."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from ponder.engine.engine import Engine
from ponder.serve.app import create_app
from ponder.serve.service import ServeConfig, Service

KEY = "test-key-123"
_MODEL = {}


def base_model(name: str = "tiny"):
    """A model loaded once; by default the built-in tiny base (it thinks on some samples, answers on all)."""
    if name not in _MODEL:
        from ponder.models.model import load_model
        _MODEL[name] = load_model(name)
    return _MODEL[name]


class RunningServer:
    """`with RunningServer(cfg) as s:` serves `cfg` at `s.url` until the block ends."""

    def __init__(self, cfg: ServeConfig | None = None):
        self.cfg = cfg or ServeConfig(api_key=KEY)
        model, tok = base_model(self.cfg.model)
        self.service = Service(Engine(model, tok), self.cfg)
        self.app = create_app(self.service, self.cfg.api_key)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "RunningServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.service.close()
        self.sock.close()
