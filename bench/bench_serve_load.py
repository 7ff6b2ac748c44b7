"""Can one request freeze ``nanoseek serve``? Running streams' inter-token latency while a huge body
is refused and while a large (allowed) prompt is tokenized.

Starts ``nanoseek serve`` as a subprocess (its own GIL) on a small model (``--model PATH``, default a
tiny random DeepSeek-V3 saved as a checkpoint, as ``bench_serve.py``), keeps ``--streams`` streaming
requests running (each client starts a new one when its stream ends) and probes ``GET /health``
every 50 ms. Three phases of the same streams:

1. *baseline*: nothing else;
2. *oversize*: ``--oversize-mb`` (4) MB request bodies, one after another (``--repeats`` times); each
   should get a 413 at once;
3. *large prompt*: a prompt just under the server's body limit (``--large-mb``, 1.9 MB by default);
   it is tokenized in full and then refused for the context length (400), which is the most work a
   request can make the server do before generation.

For each phase it prints the streams' gaps between consecutive chunks (p50 / p99 / max, ms), the
slowest ``/health`` answer, and the time and status of each big request; ratios compare the p99 gap
and the slowest gap with the baseline. ``--json PATH`` writes the same numbers.
Usage: ``python bench/bench_serve_load.py [--model PATH] [--streams 4] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_serve import free_port, tiny_checkpoint


class Probe:
    """Streams and a /health probe running in one asyncio loop (a thread); every gap and probe is
    kept with its start and end time, and a phase is read off as a time window (a gap or probe
    counts in the window where it ends; each phase's window runs until the next phase starts, after
    a settling second, so a stall counts in the phase that caused it)."""

    def __init__(self, url: str, streams: int, max_tokens: int):
        self.url, self.streams, self.max_tokens = url, streams, max_tokens
        self.gaps: list[tuple[float, float]] = []  # (start, end) between consecutive chunks of a stream
        self.health: list[tuple[float, float]] = []  # (start, end) of each /health request
        self.errors: list[str] = []
        self.tokens = self.chunks = 0  # generated tokens (usage) and chunks of the streams that finished
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _stream(self, client, k: int) -> None:
        body = {"messages": [{"role": "user", "content": f"Tell me a story, {k}."}], "max_tokens": self.max_tokens,
                "temperature": 1.0, "stream": True, "stream_options": {"include_usage": True}}
        while not self.stop.is_set():
            try:
                async with client.stream("POST", self.url + "/v1/chat/completions", json=body) as r:
                    last, chunks = None, 0
                    async for line in r.aiter_lines():
                        if not line.startswith("data: {"):
                            continue
                        now = time.perf_counter()
                        chunk = json.loads(line[6:])
                        if chunk.get("usage"):  # the stream's last chunk: count it for chunks per token
                            self.tokens += chunk["usage"]["completion_tokens"]
                            self.chunks += chunks
                            continue
                        chunks += 1
                        if last is not None:
                            self.gaps.append((last, now))
                        last = now
                        if self.stop.is_set():
                            break
            except Exception as e:  # counted, reported
                self.errors.append(f"{type(e).__name__}: {e}")

    async def _health(self, client) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                await client.get(self.url + "/health")
            except Exception as e:
                self.errors.append(f"health {type(e).__name__}: {e}")
            self.health.append((t0, time.perf_counter()))
            await asyncio.sleep(0.05)

    async def _main(self) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=self.streams + 4)) as client:
            await asyncio.gather(self._health(client), *(self._stream(client, k) for k in range(self.streams)))

    def window(self, t0: float, t1: float) -> dict:
        """Gap and /health statistics of the gaps and probes that end in [t0, t1)."""
        gaps = sorted(b - a for a, b in self.gaps if t0 <= b < t1)
        health = [b - a for a, b in self.health if t0 <= b < t1]

        def pct(p):
            return 1000 * gaps[min(len(gaps) - 1, int(round(p / 100 * (len(gaps) - 1))))] if gaps else float("nan")

        return {"chunks": len(gaps), "gap_p50_ms": pct(50), "gap_p99_ms": pct(99), "gap_max_ms": pct(100),
                "health_max_ms": 1000 * max(health) if health else float("nan"), "health_probes": len(health)}


def big_request(host: str, port: int, body: bytes) -> dict:
    """POST ``body`` on a fresh connection; its status, error code and seconds to the full answer."""
    conn = http.client.HTTPConnection(host, port, timeout=120)
    t0 = time.perf_counter()
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        status = r.status
    except Exception as e:  # e.g. the server reset the connection: reported as it is
        return {"status": None, "error": f"{type(e).__name__}: {e}", "seconds": time.perf_counter() - t0}
    finally:
        conn.close()
    try:
        code = (json.loads(data).get("error") or {}).get("code")
    except ValueError:
        code = data[:80].decode("utf-8", "replace")
    return {"status": status, "code": code, "seconds": time.perf_counter() - t0}


def prompt_body(megabytes: float) -> bytes:
    """A chat request whose JSON body is ``megabytes`` MB (10^6 bytes) of plain words."""
    head, tail = b'{"messages": [{"role": "user", "content": "', b'"}], "max_tokens": 8}'
    n = int(megabytes * 1_000_000) - len(head) - len(tail)
    words = (b"lorem ipsum dolor sit amet " * (n // 27 + 1))[:n]
    return head + words + tail


def phase(seconds: float, action=None) -> tuple[tuple[float, float], list[dict]]:
    """Run ``action`` (returns the big requests' results), wait until ``seconds`` have passed since
    the start, then one more second for the streams to settle; returns the start and the results.
    (Windows are read off the probe once it has stopped: a stall's gap is only recorded when the
    chunk after it arrives.)"""
    t0 = time.perf_counter()
    results = action() if action else []
    while time.perf_counter() - t0 < seconds:
        time.sleep(0.05)
    time.sleep(1.0)
    return t0, results


def start_server(model: str, port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-m", "nanoseek.cli.main", "serve", "--model", model, "--port", str(port),
                             # answer tags off: the text streams as it is generated (with them, a random
                             # model's text after </think> is held back until an <answer> that never comes)
                             "--served-model-name", "bench", "--answer-tags", "off"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_ready(url: str, server: subprocess.Popen) -> None:
    import httpx

    for _ in range(1200):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read()[-2000:]}")
    raise SystemExit("the server did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model path (default: a tiny random nanoseek checkpoint)")
    ap.add_argument("--streams", type=int, default=4, help="streaming clients kept running")
    ap.add_argument("--max-tokens", type=int, default=256, help="tokens per streamed request")
    ap.add_argument("--oversize-mb", type=float, default=4.0)
    ap.add_argument("--large-mb", type=float, default=1.9, help="the allowed large prompt (under the 2 MiB default limit)")
    ap.add_argument("--repeats", type=int, default=2, help="big requests per phase")
    ap.add_argument("--seconds", type=float, default=3.0, help="shortest phase")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server (OMP_NUM_THREADS)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    model = args.model or str(tiny_checkpoint(Path(tmp.name) / "tiny"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(model, port, args.threads)
    oversize, large = prompt_body(args.oversize_mb), prompt_body(args.large_mb)
    try:
        wait_ready(url, server)
        probe = Probe(url, args.streams, args.max_tokens)
        probe.thread.start()
        time.sleep(1.0)  # streams under way
        base, _ = phase(args.seconds)
        over, over_res = phase(args.seconds, lambda: [big_request("127.0.0.1", port, oversize)
                                                      for _ in range(args.repeats)])
        big, big_res = phase(args.seconds, lambda: [big_request("127.0.0.1", port, large)
                                                    for _ in range(args.repeats)])
        end = time.perf_counter()
        probe.stop.set()
        probe.thread.join(30)
        base, over, big = probe.window(base, over), probe.window(over, big), probe.window(big, end)
    finally:
        server.terminate()
        server.wait(20)
        tmp.cleanup()

    print(f"nanoseek serve under big requests: model={args.model or 'tiny random nanoseek'}, {args.streams} streams, "
          f"server threads={args.threads}")
    print(f"{'phase':14}{'chunks':>8}{'gap p50':>10}{'gap p99':>10}{'gap max':>10}{'health max':>12}")
    rows = (("baseline", base), (f"{args.oversize_mb:g} MB body", over), (f"{args.large_mb:g} MB prompt", big))
    for name, w in rows:
        print(f"{name:14}{w['chunks']:>8}{w['gap_p50_ms']:>8.1f}ms{w['gap_p99_ms']:>8.1f}ms{w['gap_max_ms']:>8.1f}ms"
              f"{w['health_max_ms']:>10.1f}ms")
    for name, res in ((f"{args.oversize_mb:g} MB body", over_res), (f"{args.large_mb:g} MB prompt", big_res)):
        shown = ", ".join(f"{r['status']} {r.get('code') or r.get('error')} in {r['seconds']:.3f}s" for r in res)
        print(f"{name}: {shown}")
    ratios = {name: {"gap_p99": w["gap_p99_ms"] / base["gap_p99_ms"], "gap_max": w["gap_max_ms"] / base["gap_max_ms"]}
              for name, w in rows[1:]}
    for name, r in ratios.items():
        print(f"{name} / baseline: gap p99 {r['gap_p99']:.2f}x, gap max {r['gap_max']:.2f}x")
    per_token = probe.chunks / max(1, probe.tokens)
    print(f"stream chunks per generated token: {per_token:.2f} (1.0: every gap is one token's latency)")
    if probe.errors:
        print(f"client errors: {len(probe.errors)}; first: {probe.errors[0]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"baseline": base, "oversize": over, "oversize_requests": over_res,
                                               "large_prompt": big, "large_prompt_requests": big_res,
                                               "ratios": ratios, "client_errors": len(probe.errors),
                                               "chunks_per_token": per_token,
                                               "settings": vars(args)}, indent=2))
    return 1 if probe.errors else 0


if __name__ == "__main__":
    sys.exit(main())
