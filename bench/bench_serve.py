"""Load benchmark of ``nanoseek serve``: N concurrent streaming clients vs one client at a time.

Starts ``nanoseek serve`` as a subprocess (so the clients do not share its GIL) on a small model —
``--model PATH``, or by default a tiny random DeepSeek-V3 (``ModelConfig.tiny``) saved as a
checkpoint — then runs

1. *sequential*: ``--baseline-requests`` streaming requests, one at a time;
2. *concurrent*: ``--clients`` clients, each sending ``--requests-per-client`` streaming requests
   back to back (continuous batching merges them into one running batch).

It reports time to first token (first streamed delta; p50 / p99), generated tokens per second over
the whole phase (from the ``include_usage`` chunk) and errors, and the concurrent/sequential ratio.
Usage: ``python bench/bench_serve.py [--model PATH] [--clients 32] [--max-tokens 64]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tiny_checkpoint(folder: Path) -> Path:
    import torch

    from nanoseek.model.hf import save_model
    from nanoseek.model import DeepseekV3ForCausalLM, ModelConfig
    from nanoseek.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(vocab_size=len(tok), num_nextn_predict_layers=0, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(DeepseekV3ForCausalLM(cfg), folder, tok)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_request(client, url: str, i: int, max_tokens: int) -> dict:
    body = {"messages": [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}], "max_tokens": max_tokens,
            "seed": i, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, tokens, error = None, 0, None
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    error = chunk["error"]["message"]
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                for c in chunk.get("choices", []):
                    d = c["delta"]
                    if ttft is None and (d.get("content") or d.get("reasoning_content")):
                        ttft = time.perf_counter() - t0
    except Exception as e:  # counted, reported
        error = f"{type(e).__name__}: {e}"
    return {"ttft": ttft, "tokens": tokens, "latency": time.perf_counter() - t0, "error": error}


async def phase(url: str, clients: int, per_client: int, max_tokens: int, offset: int) -> dict:
    import httpx

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as client:
        async def worker(w: int):
            return [await one_request(client, url, offset + w * per_client + k, max_tokens) for k in range(per_client)]

        t0 = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(worker(w) for w in range(clients))) for r in rs]
        wall = time.perf_counter() - t0
    errors = [r["error"] for r in results if r.get("error")]
    ttfts = sorted(r["ttft"] for r in results if r.get("ttft") is not None)
    tokens = sum(r.get("tokens", 0) for r in results)

    def pct(p):
        return ttfts[min(len(ttfts) - 1, int(round(p / 100 * (len(ttfts) - 1))))] if ttfts else float("nan")

    return {"requests": len(results), "errors": len(errors), "first_error": errors[0] if errors else None,
            "wall_s": wall, "tokens": tokens, "tok_per_s": tokens / wall if wall else 0.0,
            "ttft_p50_ms": 1000 * pct(50), "ttft_p99_ms": 1000 * pct(99),
            "ttft_mean_ms": 1000 * statistics.fmean(ttfts) if ttfts else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model path (default: a tiny random nanoseek checkpoint)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--baseline-requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server (OMP_NUM_THREADS)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    model = args.model or str(tiny_checkpoint(Path(tmp.name) / "tiny"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    server = subprocess.Popen([sys.executable, "-m", "nanoseek.cli.main", "serve", "--model", model, "--port", str(port),
                               "--served-model-name", "bench", "--max-batch", str(max(64, args.clients))],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        import httpx

        for _ in range(1200):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
            if server.poll() is not None:
                raise SystemExit(f"server exited: {server.stderr.read()[-2000:]}")
        asyncio.run(phase(url, 1, 2, 8, 10_000))  # warm-up
        seq = asyncio.run(phase(url, 1, args.baseline_requests, args.max_tokens, 0))
        conc = asyncio.run(phase(url, args.clients, args.requests_per_client, args.max_tokens, 1000))
    finally:
        server.terminate()
        server.wait(20)
        tmp.cleanup()

    print(f"nanoseek serve benchmark: model={args.model or 'tiny random nanoseek (ModelConfig.tiny)'}, "
          f"max_tokens={args.max_tokens}, server threads={args.threads}")
    print(f"{'':14}{'requests':>9}{'errors':>8}{'TTFT p50':>11}{'TTFT p99':>11}{'tokens':>8}{'tok/s':>9}")
    for name, r in (("1 client", seq), (f"{args.clients} clients", conc)):
        print(f"{name:14}{r['requests']:>9}{r['errors']:>8}{r['ttft_p50_ms']:>9.0f}ms{r['ttft_p99_ms']:>9.0f}ms"
              f"{r['tokens']:>8}{r['tok_per_s']:>9.1f}")
    ratio = conc["tok_per_s"] / seq["tok_per_s"] if seq["tok_per_s"] else float("nan")
    print(f"throughput ratio ({args.clients} concurrent / 1 at a time): {ratio:.2f}x")
    if conc["first_error"] or seq["first_error"]:
        print("first error:", conc["first_error"] or seq["first_error"])
    if args.json:
        Path(args.json).write_text(json.dumps({"sequential": seq, "concurrent": conc, "ratio": ratio}, indent=2))
    return 1 if conc["errors"] or seq["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
