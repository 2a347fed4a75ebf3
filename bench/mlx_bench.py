"""Embedded MLX backend benchmark: three ratios, each against a baseline measured in the same run.

    uv run python bench/mlx_bench.py [--quick | --smoke] [--dir DIR] [--no-openblas]

Model: a random-weight Qwen3-shaped model generated locally (demo_model.generate.BENCH, ~18M
parameters, fp32), so timings mean something on a CPU and nothing is downloaded.

1. decode tok/s through the gateway (HTTP + SSE, streaming) vs raw mlx_lm.stream_generate on the
   same model and prompt. Both sides: (N − 1) / (time for N tokens − time for 1 token), so prefill
   cancels out; raw and gateway alternate, and the median of the per-round ratios is reported.
   Target ≥ 97 %.
2. TTFT of turn 2 vs turn 1 of a Claude-Code-shaped session (~20k prompt tokens; bench/
   claude_code_request.py): turn 2 adds one tool round and a new billing header, so it must be
   served from the session's prompt cache. TTFT = a max_tokens=1 streamed request. Target ≤ 15 %.
3. aggregate decode tok/s of 4 concurrent sessions vs 1. Target ≥ 2.5×.

On Linux, mlx's CPU wheel links the reference BLAS (a few GFLOPS). When the system has OpenBLAS
(Debian: apt-get install libopenblas0-pthread) the benchmark re-runs itself with it preloaded, for
both the raw baseline and the gateway; --no-openblas keeps the reference BLAS.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.claude_code_request import _tool_round, build_request  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.sse import iter_frames  # noqa: E402

OPENBLAS = ("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
            "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3")
SHORT_PROMPTS = ["Explain what a prompt cache does.", "List three uses of a hash map.",
                 "Describe the water cycle briefly.", "Why do tests matter in a codebase?"]


def _maybe_openblas(args: argparse.Namespace) -> None:
    if sys.platform != "linux" or args.no_openblas or "LD_PRELOAD" in os.environ:
        return
    for lib in OPENBLAS:
        if Path(lib).exists():
            os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, LD_PRELOAD=lib))


# -- raw mlx-lm ---------------------------------------------------------------------------------

class RawModel:
    """The same model loaded in this process, driven by mlx_lm.stream_generate (greedy)."""

    def __init__(self, model_dir: Path, prompt: str):
        from mlx_lm import load

        self.model, self.tok = load(str(model_dir))
        self.ids = self.tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                enable_thinking=False)  # as the gateway renders it

    def timed(self, max_tokens: int) -> tuple[float, int]:
        from mlx_lm import stream_generate

        t0 = time.perf_counter()
        count = 0
        for _ in stream_generate(self.model, self.tok, self.ids, max_tokens=max_tokens):
            count += 1
        return time.perf_counter() - t0, count

    def decode_tps(self, n: int) -> tuple[float, int]:
        t1, _ = self.timed(1)
        tn, tokens = self.timed(n)
        return (tokens - 1) / (tn - t1), tokens


# -- through the gateway ------------------------------------------------------------------------

class Gateway:
    """`claude-gateway serve` in a subprocess, on a free port."""

    def __init__(self, model_dir: Path, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = workdir / "bench-config.toml"
        cfg.write_text(f'[server]\nhost = "127.0.0.1"\nport = {self.port}\n[log]\nrequests = "{workdir}/req.jsonl"\n'
                       f'level = "warning"\n[routing]\ndefault = "m"\n[backends.m]\ntype = "mlx"\n'
                       f'model = "{model_dir}"\ncache_mb = 8192\nmax_batch = 8\n')
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg)],
                                     cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:
            if "listening on" in line:
                break
        else:
            raise SystemExit("the gateway did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


async def _stream(session: aiohttp.ClientSession, url: str, body: dict, sid: str) -> tuple[float, int]:
    """(seconds until message_stop, output tokens) of one streamed request."""
    t0 = time.perf_counter()
    headers = {"anthropic-version": "2023-06-01", "content-type": "application/json", "X-Claude-Code-Session-Id": sid}
    async with session.post(url + "/v1/messages", data=orjson.dumps({**body, "stream": True}),
                            headers=headers) as resp:
        if resp.status != 200:
            raise SystemExit(f"gateway answered {resp.status}: {await resp.text()}")
        output = 0
        async for name, data in iter_frames(resp.content):
            if name == "message_delta":
                output = data["usage"]["output_tokens"]
    return time.perf_counter() - t0, output


def _short(prompt: str, n: int) -> dict:
    return {"model": "claude-sonnet-4-6", "max_tokens": n, "temperature": 0,
            "messages": [{"role": "user", "content": prompt}]}


async def gateway_decode_tps(url: str, prompt: str, n: int) -> tuple[float, int]:
    """Same formula as RawModel.decode_tps, through HTTP + SSE (the prompt is cached for both runs)."""
    async with aiohttp.ClientSession() as s:
        t1, _ = await _stream(s, url, _short(prompt, 1), "d")
        tn, tokens = await _stream(s, url, _short(prompt, n), "d")
        return (tokens - 1) / (tn - t1), tokens


async def session_ttft(url: str, turns: int, target_bytes: int, tools: int) -> tuple[float, float, int]:
    """(turn-1 TTFT, turn-2 TTFT, turn-1 prompt tokens) for a Claude-Code-shaped session."""
    body = build_request(turns=turns, target_bytes=target_bytes, model="claude-sonnet-4-6")
    body["tools"] = body["tools"][:tools]
    body["max_tokens"] = 1
    async with aiohttp.ClientSession() as s:
        count = {k: body[k] for k in ("model", "system", "messages", "tools", "thinking")}
        async with s.post(url + "/v1/messages/count_tokens", data=orjson.dumps(count),
                          headers={"content-type": "application/json"}) as resp:
            prompt_tokens = (await resp.json())["input_tokens"]
        t1, _ = await _stream(s, url, body, "cc-session")
        assistant, user = _tool_round(turns)
        body["messages"] = body["messages"] + [assistant, user]
        body["system"][0] = {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.d71; "
                                                     "cc_entrypoint=sdk-cli; cch=9c0d4;"}
        t2, _ = await _stream(s, url, body, "cc-session")
    return t1, t2, prompt_tokens


async def aggregate_tps(url: str, sessions: int, n: int) -> float:
    async with aiohttp.ClientSession() as s:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(_stream(s, url, _short(SHORT_PROMPTS[i % 4] + f" ({sessions})", n),
                                                 f"agg-{sessions}-{i}") for i in range(sessions)))
        wall = time.perf_counter() - t0
    return sum(out for _, out in results) / wall


# -- main ---------------------------------------------------------------------------------------

def _row(name: str, base: str, value: str, ratio: float, target: str, ok: bool) -> str:
    return f"{name:<34} {base:>22} {value:>22} {ratio:>8.2f}  {target:<8} {'PASS' if ok else 'FAIL'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~6k-token session, fewer tokens and rounds")
    parser.add_argument("--dir", help="where the bench model is generated (default: the demo cache dir)")
    parser.add_argument("--no-openblas", action="store_true", help="keep mlx's bundled reference BLAS on Linux")
    parser.add_argument("--smoke", action="store_true",
                        help="every step once on the tests' tiny model, a few tokens: checks the script, measures nothing")
    args = parser.parse_args()
    _maybe_openblas(args)

    from demo_model.generate import BENCH, TINY, ensure_demo_model

    n = 100 if args.quick else 200
    rounds = 3 if args.quick else 5
    # ~6.5k prompt tokens quick, ~20k full (the bench tokenizer spends ~2.3 characters per token).
    turns, target_bytes, tools = (3, 0, 6) if args.quick else (16, 46_000, 25)
    if args.smoke:
        n, rounds, turns, tools = 8, 1, 1, 2
    t = time.perf_counter()
    model_dir = ensure_demo_model(TINY if args.smoke else BENCH, root=args.dir)
    print(f"model {model_dir} ({time.perf_counter() - t:.0f} s to prepare); BLAS: "
          f"{os.environ.get('LD_PRELOAD') or 'mlx bundled (reference)'}", flush=True)

    raw = RawModel(model_dir, SHORT_PROMPTS[0])
    raw.timed(8)  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        gw = Gateway(model_dir, Path(tmp))
        try:
            asyncio.run(gateway_decode_tps(gw.url, SHORT_PROMPTS[0], 8))  # warm-up, caches the prompt
            # Paired rounds (raw, then gateway right after): each ratio sees the same background
            # load; the median ratio is reported.
            pairs = []
            for _ in range(rounds):
                raw_tps, raw_tokens = raw.decode_tps(n)
                gw_tps, gw_tokens = asyncio.run(gateway_decode_tps(gw.url, SHORT_PROMPTS[0], n))
                pairs.append((raw_tps, gw_tps))
                print(f"decode round: raw mlx_lm {raw_tps:.1f} tok/s ({raw_tokens} tokens), gateway {gw_tps:.1f} "
                      f"tok/s ({gw_tokens} tokens)", flush=True)
            raw_tps, gw_tps = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
            decode_ratio = statistics.median(g / r for r, g in pairs)
            del raw
            t1, t2, prompt_tokens = asyncio.run(session_ttft(gw.url, turns, target_bytes, tools))
            print(f"session TTFT: turn 1 {t1:.2f} s, turn 2 {t2:.2f} s ({prompt_tokens} prompt tokens)", flush=True)
            runs = [(asyncio.run(aggregate_tps(gw.url, 1, n)), asyncio.run(aggregate_tps(gw.url, 4, n)))
                    for _ in range(rounds)]
            one, four = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
            agg_ratio = statistics.median(f / o for o, f in runs)
            print(f"aggregate: 1 session {one:.1f} tok/s, 4 sessions {four:.1f} tok/s", flush=True)
        finally:
            gw.stop()

    print()
    print(f"{'measure':<34} {'baseline':>22} {'measured':>22} {'ratio':>8}  {'target':<8} result")
    print(_row("decode tok/s (gateway / raw)", f"raw {raw_tps:.1f}", f"gateway {gw_tps:.1f}",
               decode_ratio, "≥ 0.97", decode_ratio >= 0.97))
    print(_row(f"TTFT turn 2 / turn 1 ({prompt_tokens} tok)", f"turn 1 {t1:.2f} s", f"turn 2 {t2:.2f} s",
               t2 / t1, "≤ 0.15", t2 / t1 <= 0.15))
    print(_row("aggregate tok/s (4 sessions / 1)", f"1 session {one:.1f}", f"4 sessions {four:.1f}",
               agg_ratio, "≥ 2.5", agg_ratio >= 2.5))


if __name__ == "__main__":
    main()
