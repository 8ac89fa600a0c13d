"""`ponder serve MODEL`: an OpenAI-, Anthropic- and Gemini-compatible HTTP server for a ponder model.

    ponder serve tiny --port 8000 [--api-key KEY] [--max-batch 64] [--reasoning visible|hidden|summary]

Routes: `POST /v1/chat/completions`, `GET /v1/models` (OpenAI), `POST /v1/messages`
(Anthropic), `POST /v1beta/models/MODEL:generateContent` and `:streamGenerateContent`
(Gemini), `GET /health`, and a chat page at `/`. Requests are decoded together
by continuous batching (`ponder.serve.worker`) on the step-wise engine, which runs
in a process of its own (`ponder.serve.engine_proc`; `--engine thread`: in this one).

Safety: 127.0.0.1 by default; with an API key (`--api-key` or $PONDER_API_KEY) every
route but /health and the static page needs it, as `Authorization: Bearer KEY`,
`x-api-key: KEY` or `x-goog-api-key: KEY` (the page holds no data; it asks for the
key and sends it); request bodies are capped (`--max-body`, 413 beyond); a bad
request gets 400 with a message naming the field and its valid values, never a 500.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import sys
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ponder.serve.reasoning import RequestError
from ponder.serve.service import ServeConfig, Service, start_worker

STATIC = Path(__file__).parent / "static"
OPEN_PATHS = ("/health", "/")  # reachable without the key: a liveness probe and a static page


def error_body(path: str, status: int, message: str, param: str | None = None, kind: str | None = None) -> dict:
    """An error in the format of the API the path belongs to."""
    kind = kind or {401: "authentication_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error"}.get(status, "invalid_request_error" if status < 500 else "api_error")
    if path.startswith("/v1/messages"):
        return {"type": "error", "error": {"type": kind, "message": message}}
    if path.startswith("/v1beta/"):  # Gemini
        status_name = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 413: "INVALID_ARGUMENT",
                       429: "RESOURCE_EXHAUSTED"}.get(status, "INTERNAL")
        return {"error": {"code": status, "message": message, "status": status_name}}
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _error(path: str, status: int, message: str, param=None, kind=None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(path, status, message, param, kind), status_code=status, headers=headers)


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One line naming each bad field and what it should be, and the first field's name."""
    parts, first = [], None
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        if e.get("type") == "json_invalid":
            return f"the body is not valid JSON: {e.get('ctx', {}).get('error', e.get('msg'))}", None
        name = ".".join(loc) or "body"
        first = first or name
        parts.append(f"{name}: {e.get('msg')}" + (f" (got {e['input']!r})" if _short(e.get("input")) else ""))
    return "; ".join(parts), first


def _short(value) -> bool:
    return isinstance(value, (int, float, str, bool)) and len(repr(value)) <= 60


class Guard:
    """ASGI middleware: API key on every route but OPEN_PATHS; request bodies capped at `max_body`."""

    def __init__(self, app, api_key: str, max_body: int):
        self.app, self.key, self.max_body = app, api_key, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, headers = scope["path"], dict(scope["headers"])
        if self.key and path not in OPEN_PATHS and not self._authorized(headers):
            return await _error(path, 401, "missing or wrong API key; send Authorization: Bearer KEY, "
                                           "x-api-key: KEY or x-goog-api-key: KEY")(scope, receive, send)
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return await self._too_large(scope, receive, send)
        body, more = b"", True
        while more:  # read the whole (capped) body first, so an oversized chunked body is refused too
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_body:
                return await self._too_large(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return await self.app(scope, replay, send)

    def _authorized(self, headers: dict) -> bool:
        given = (headers.get(b"x-api-key") or headers.get(b"x-goog-api-key") or b"").decode("latin-1")
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth.lower().startswith("bearer "):
            given = given or auth[7:].strip()
        return bool(given) and hmac.compare_digest(given.encode(), self.key.encode())

    async def _too_large(self, scope, receive, send):
        await _error(scope["path"], 413, f"request body larger than {self.max_body} bytes (--max-body)")(
            scope, receive, send)


def create_app(service: Service, api_key: str = "") -> FastAPI:
    from ponder.serve import anthropic_api, gemini_api, openai_api
    app = FastAPI(title="ponder serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.include_router(openai_api.router)
    app.include_router(anthropic_api.router)
    app.include_router(gemini_api.router)

    @app.get("/health")
    def health():
        stats = service.worker.stats()
        ok = stats.get("engine", "running") == "running"  # "exited: why" once the engine process has died
        body = {"status": "ok" if ok else "unavailable", "model": service.name, "auth": bool(api_key), **stats}
        return body if ok else JSONResponse(body, status_code=503)

    @app.get("/")
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError):
        message, param = validation_message(list(exc.errors()))
        return _error(request.url.path, 400, message, param)

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError):
        return _error(request.url.path, exc.status, str(exc), exc.param, exc.kind, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(request.url.path, exc.status_code, str(exc.detail))

    app.add_middleware(Guard, api_key=api_key, max_body=service.cfg.max_body)
    return app


def build(cfg: ServeConfig):
    """(app, service) for `cfg`: the model loaded, the batching worker running."""
    from ponder.engine.engine import Engine
    from ponder.models.model import load_model
    worker = start_worker(None, cfg) if cfg.engine == "process" else None  # loads its copy meanwhile
    model, tok = load_model(cfg.model, device=cfg.device)
    service = Service(Engine(model, tok), cfg, worker)
    return create_app(service, cfg.api_key or os.environ.get("PONDER_API_KEY", "")), service


def main(argv: list[str]) -> int:
    from ponder.core import config as C
    ap = argparse.ArgumentParser(prog="ponder serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_arg", nargs="?", metavar="MODEL", help="tiny, a model folder, smollm2-135m, ...")
    C.add_arguments(ap, ServeConfig)
    args = ap.parse_args(argv)
    cfg = C.from_args(ServeConfig, args, model=args.model_arg)
    C.set_threads(cfg.threads)
    import uvicorn
    app, service = build(cfg)
    key = "required" if (cfg.api_key or os.environ.get("PONDER_API_KEY")) else "none"
    if key == "none" and cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"ponder serve: warning: listening on {cfg.host} with no API key: anyone who can reach it "
              f"can use it (set --api-key or $PONDER_API_KEY)", file=sys.stderr)
    print(json.dumps({"serving": service.name, "url": f"http://{cfg.host}:{cfg.port}", "api_key": key}), flush=True)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
    finally:
        service.close()
    return 0
