"""The streaming HTTP response every route uses: server-sent events over a submitted job.

Starlette closes a body generator only once it has started. A client that hangs up
before Starlette starts the body (between the route's return and the first `send`)
cancels the response's task with the generator never entered, so no `finally` in it
runs and the job would decode to its token limit for nobody. `JobStream` closes the
generator and cancels the job however the response ends; cancelling a job that has
finished is a no-op in every worker.
"""

from __future__ import annotations

from fastapi.responses import StreamingResponse


class JobStream(StreamingResponse):
    def __init__(self, events, cancel):
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._cancel = cancel

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # a started generator runs its own finally here
            self._cancel()  # and a never-started one drops its job here
