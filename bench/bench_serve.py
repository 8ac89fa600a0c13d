"""Benchmark: `ponder serve` throughput and latency with 1, 8, 32, 64 concurrent streaming clients.

    python bench/bench_serve.py [--model tiny] [--threads 1] [--engine process,thread] [--rounds 3]
                                [--requests 8] [--min-requests 32] [--max-seconds 60]

Starts `ponder serve MODEL --engine E` as its own process on a free loopback port
for each `--engine` mode asked for (process: the decode loop in a process of its
own, the default of `ponder serve`; thread: in the server process), then for
each concurrency level runs that many clients, each sending `--requests`
streaming chat requests one after another (at least `--min-requests` per level
in all, so one client sends 32), with arithmetic prompts, reasoning effort high,
temperature 1 and fixed seeds; no new request starts after `--max-seconds`.
Per level it prints the aggregate decode rate (completion tokens from the usage
chunks / wall time), time to first token (p50, p95) and request latency (p50,
p95), the server's CPU share of one core (its engine process included), its
tokens per CPU-second, the rows decoded per engine step (tokens / steps: how
full the batch was), and the load generator's own CPU share (this script's
clients run in this process, not the server's; on a 2-core machine they take a
share of the CPU the server could use, so it is shown).
All levels (and modes) run once per round, `--rounds` rounds, interleaved, so a
change in a shared machine's load hits all alike; the last lines give each
mode's median 32-client aggregate rate divided by its median 1-client one.
This is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time

try:  # the HTTP client the openai and anthropic clients are built on (httpx2 in newer ones)
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

LEVELS = (1, 8, 32, 64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, threads: int, engine: str = "process") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ponder.cli", "serve", model, "--port", str(port), "--threads", str(threads),
           "--max-batch", "64", "--engine", engine]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_up(proc: subprocess.Popen, port: int, timeout: float = 600) -> subprocess.Popen:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start in {timeout:.0f} s")


def prompts(n: int) -> list[str]:
    from ponder.tasks import get_task
    return [ex.prompt.strip() for ex in get_task("arithmetic").examples("test", n, seed=1)]


async def one_request(client: httpx.AsyncClient, model: str, prompt: str, seed: int, max_tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True, "seed": seed,
            "max_completion_tokens": max_tokens, "reasoning_effort": "high", "temperature": 1.0,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, usage = None, None
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return {"error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if first is None and any((c["delta"].get("content") or c["delta"].get("reasoning"))
                                     for c in chunk.get("choices", [])):
                first = time.perf_counter()
    end = time.perf_counter()
    if usage is None:
        return {"error": "stream ended without a usage chunk"}
    return {"ttft": (first or end) - t0, "latency": end - t0, "tokens": usage["completion_tokens"]}


async def level(url: str, model: str, clients: int, requests: int, max_seconds: float, max_tokens: int,
                pool: list[str]) -> dict:
    deadline = time.perf_counter() + max_seconds
    results: list[dict] = []

    async def client_loop(c: int, http: httpx.AsyncClient):
        for k in range(requests):
            if time.perf_counter() > deadline:
                return
            i = c * requests + k
            try:
                results.append(await one_request(http, model, pool[i % len(pool)], seed=i, max_tokens=max_tokens))
            except httpx.HTTPError as e:
                results.append({"error": repr(e)})

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(c, http) for c in range(clients)))
        wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    q = lambda xs, p: statistics.quantiles(xs, n=100, method="inclusive")[p - 1] if len(xs) > 1 else xs[0]
    ttft, lat = [r["ttft"] for r in ok] or [float("nan")], [r["latency"] for r in ok] or [float("nan")]
    tokens = sum(r["tokens"] for r in ok)
    return {"clients": clients, "requests": len(ok), "errors": len(errors), "first_error": errors[:1],
            "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "ttft_p50": q(ttft, 50), "ttft_p95": q(ttft, 95), "latency_p50": q(lat, 50), "latency_p95": q(lat, 95)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of process `pid` and the processes it started (the server's
    engine process), from Linux /proc; NaN elsewhere."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return own + sum(cpu_seconds(c) for c in children(pid))
    except (OSError, ValueError, IndexError):
        return float("nan")


def children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def report(r: dict) -> str:
    return (f"{r['engine']:>7} {r['clients']:>7} {r['round']:>5} {r['requests']:>8} {r['errors']:>6} {r['tokens']:>7} "
            f"{r['tokens_per_s']:>8.0f} {r['ttft_p50']:>8.3f}s {r['ttft_p95']:>8.3f}s "
            f"{r['latency_p50']:>7.3f}s {r['latency_p95']:>7.3f}s {r['server_cpu_share']:>6.0%} "
            f"{r['tokens_per_cpu_s']:>9.0f} {r['rows_per_step']:>9.1f} {r['client_cpu_share']:>6.0%}")


HEADER = (f"{'engine':>7} {'clients':>7} {'round':>5} {'requests':>8} {'errors':>6} {'tokens':>7} {'tok/s':>8} "
          f"{'TTFT p50':>9} {'TTFT p95':>9} {'lat p50':>8} {'lat p95':>8} {'srvCPU':>6} {'tok/cpu-s':>9} "
          f"{'rows/step':>9} {'genCPU':>6}")


def own_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def measure(server: dict, args, clients: int, requests: int, pool: list[str], k: int) -> dict:
    """One level against one server, with the server's and this process's CPU time."""
    url, pid = server["url"], server["proc"].pid
    cpu0, gen0 = cpu_seconds(pid), own_cpu()
    steps0 = httpx.get(url + "/health", timeout=5).json()["steps"]
    r = asyncio.run(level(url, args.model, clients, requests, args.max_seconds, args.max_tokens, pool))
    cpu, gen = cpu_seconds(pid) - cpu0, own_cpu() - gen0  # the server's tokens per CPU-second
    steps = httpx.get(url + "/health", timeout=5).json()["steps"] - steps0
    return {**r, "engine": server["engine"], "round": k, "server_cpu_s": cpu, "server_cpu_share": cpu / r["wall_s"],
            "tokens_per_cpu_s": r["tokens"] / cpu if cpu > 0 else float("nan"),
            "rows_per_step": r["tokens"] / steps if steps else float("nan"), "client_cpu_share": gen / r["wall_s"]}


def run_rounds(servers: list[dict], args, pool: list[str], per_client: dict) -> list[dict]:
    """Every level of every mode once per round, rounds one after another: a change in the
    machine's load (it may be shared) then hits all levels alike instead of one."""
    rows = []
    print(HEADER)
    for k in range(args.rounds):
        for c in LEVELS:
            for server in servers:
                rows.append(measure(server, args, c, per_client[c], pool, k))
                print(report(rows[-1]), flush=True)
                if rows[-1]["errors"]:
                    print(f"        first error: {rows[-1]['first_error'][0]}")
    return rows


def summary(rows: list[dict], engine: str, rounds: int) -> dict:
    mine = [r for r in rows if r["engine"] == engine]
    med = {c: statistics.median(r["tokens_per_s"] for r in mine if r["clients"] == c) for c in LEVELS}
    per_cpu = {c: statistics.median(r["tokens_per_cpu_s"] for r in mine if r["clients"] == c) for c in LEVELS}
    ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a in mine for b in mine
              if a["clients"] == 32 and b["clients"] == 1 and a["round"] == b["round"]]
    print(f"[{engine}] median tokens/s: " + ", ".join(f"{c} clients {v:.0f}" for c, v in med.items()))
    print(f"[{engine}] median tokens per server CPU-second: "
          + ", ".join(f"{c} clients {v:.0f}" for c, v in per_cpu.items()) + f" (32/1: {per_cpu[32] / per_cpu[1]:.1f}x)")
    print(f"[{engine}] 32-client / 1-client tokens/s per round: " + ", ".join(f"{x:.1f}x" for x in ratios))
    print(f"[{engine}] 32-client aggregate decode tokens/s / 1-client (medians over {rounds} rounds): "
          f"{med[32]:.0f} / {med[1]:.0f} = {med[32] / med[1]:.1f}x")
    return {"median_tokens_per_s": med, "median_tokens_per_cpu_s": per_cpu, "ratio_per_round": ratios,
            "ratio_32_1": med[32] / med[1]}


def start_all(args) -> list[dict]:
    servers = []
    for engine in args.engine.split(","):
        if engine not in ("process", "thread"):
            raise SystemExit(f"--engine {engine!r}: valid modes are process, thread (comma-separated)")
        port = free_port()
        servers.append({"engine": engine, "url": f"http://127.0.0.1:{port}", "port": port,
                        "proc": start_server(args.model, port, args.threads, engine)})
    for s in servers:  # all loading at once
        wait_up(s["proc"], s["port"])
    return servers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server's engine")
    ap.add_argument("--engine", default="process", help="server modes to measure, comma-separated: process, thread")
    ap.add_argument("--requests", type=int, default=8, help="requests per client at each level")
    ap.add_argument("--min-requests", type=int, default=32, help="requests per level at least")
    ap.add_argument("--rounds", type=int, default=3, help="times every level is run; medians are reported")
    ap.add_argument("--max-seconds", type=float, default=60, help="per level: no new request after this")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()
    per_client = {c: max(args.requests, -(-args.min_requests // c)) for c in LEVELS}
    pool = prompts(max(c * k for c, k in per_client.items()))
    servers = start_all(args)
    try:
        for s in servers:  # warm-up, not reported
            asyncio.run(level(s["url"], args.model, 4, 1, 30, args.max_tokens, pool))
        rows = run_rounds(servers, args, pool, per_client)
        for s in servers:
            health = httpx.get(s["url"] + "/health", timeout=5).json()
            print(f"[{s['engine']}] server after the run: {health['status']}, running {health['running_requests']}, "
                  f"queued {health['queued_requests']}, errors "
                  f"{sum(r['errors'] for r in rows if r['engine'] == s['engine'])}")
    finally:
        for s in servers:
            s["proc"].terminate()
            s["proc"].wait(timeout=30)
    out = {s["engine"]: summary(rows, s["engine"], args.rounds) for s in servers}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "levels": rows, "summary": out, "cpus": os.cpu_count()}, f, indent=1)


if __name__ == "__main__":
    main()
