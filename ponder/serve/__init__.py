"""`ponder serve`: OpenAI-, Anthropic- and Gemini-compatible HTTP serving with continuous batching.

Layers: `schemas` (request bodies), `reasoning` (budgets, thinking/answer split,
summaries), `worker` (the thread that steps the engine's running batch),
`engine_proc` (that worker in a process of its own, the default), `service` (prompts, limits, jobs), `openai_api` / `anthropic_api` / `gemini_api` (routes),
`app` (the FastAPI app, key check, body cap, errors, `main`), `static/` (chat page).
The engine (`ponder.engine.engine`) knows nothing of HTTP.
"""
