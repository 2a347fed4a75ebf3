"""The embedded MLX backend: models run in-process with mlx-lm (config `type = "mlx"`).

Requests are rendered with the model's chat template on a worker thread, generated on the engine
thread (backends.mlx.engine: continuous batching, prompt cache) and turned into internal events
here, on the event loop (thinking, tool calls, stop sequences).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson
import structlog

from gateway.protocol.backend import (
    Backend,
    BackendHealth,
    BackendRequest,
    BackendStartError,
    ModelInfo,
    TokenCount,
)
from backends.mlx.cache import PromptCache
from backends.mlx.eos_bias import EosBiasProcessor
from backends.mlx.options import MLXOptions
from backends.mlx.engine import Engine, Job, JobResult, LoadedModel, RequestFault
from backends.mlx.hub import (HubModels, ModelUnavailable, NotLocal, not_local_error, resolve_in_background,
                              window_on_disk)
from backends.mlx.hub import context_of as _context_of
from backends.mlx.output import OutputPipeline
from backends.mlx.prompt import Prompt, PromptRenderer
from backends.mlx.structured import json_schema_processor
from backends.tool_parsers import ParserFactory, select_parser
from gateway.protocol.backend_config import BackendConfig
from gateway.protocol.errors import GatewayError
from gateway.protocol.events import EngineStats, Event, Started, Stop, UsageReport

log = structlog.get_logger("backends.mlx")

DEFAULT_CONTEXT = 32768  # when neither config nor the model says
PREFILL_STEP = 512  # prompt tokens per engine step: bounds how long one prefill stalls other decodes


@dataclass
class ModelHandle:
    """What the event-loop side knows about a loaded model."""

    name: str
    path: Path
    renderer: PromptRenderer
    parsers: ParserFactory
    context: int
    tokenizer: object
    vocab: int  # logits per step: top_k at or above it keeps every token
    eos_ids: frozenset[int]  # the tokens that end an answer (the engine stops on each)


class MLXBackend(HubModels, Backend):
    """Models in this process, on MLX (Apple GPU on macOS, CPU on Linux)."""

    local_health = True  # the engine's published status: reading it costs nothing
    counts_exactly = True  # the model's own tokenizer; the counted render is what stream prefills

    def __init__(self, config: BackendConfig):
        super().__init__(config)
        self.options = config.options if isinstance(config.options, MLXOptions) else MLXOptions()
        self.engine: Engine | None = None
        self._handles: dict[str, ModelHandle] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        self._preloading: set[str] = set()  # preload() is loading these, or will once the server listens
        self._preload_failed: dict[str, str] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    def _engine(self) -> Engine:
        if self.engine is None:
            cache = PromptCache(int(self.options.cache_mb * 1024 * 1024), self.options.cache_ttl_s,
                                self.options.cache_across_sessions)
            self.engine = Engine(cache, max_batch=self.options.max_batch, prefill_step=PREFILL_STEP,
                                 max_resident=self.options.max_resident_models)
        return self.engine

    async def start(self) -> None:
        """Load the default model now: a model that cannot be had stops the server with one paragraph."""
        self._engine()
        preload = self.preload_names()  # loaded by preload(), once the server listens
        try:
            self.check_names(preload)
            # Loading from now on, not from when the preload task first runs: the banner, printed
            # as soon as the port listens, already says so.
            self._preloading.update(preload)
            if self.config.model and self.config.model not in preload:
                await self._model(self.config.model)
        except ModelUnavailable as exc:
            raise BackendStartError(str(exc)) from None

    async def close(self) -> None:
        if self.engine is not None:
            engine, self.engine = self.engine, None
            await asyncio.to_thread(engine.close)

    # -- models -------------------------------------------------------------------------------

    async def _model(self, name: str, download: bool = True) -> ModelHandle:
        """The handle of a loaded model, loading (and, when `download`, downloading) it on first use."""
        handle = self._handles.get(name)
        if handle is not None:
            return handle
        lock = self._loading.setdefault(name, asyncio.Lock())
        async with lock:
            handle = self._handles.get(name)
            if handle is not None:
                return handle
            path = await resolve_in_background(name, self.name, download)
            t0 = time.perf_counter()
            loader = self._loader(name, path)
            try:
                loaded: LoadedModel = await asyncio.wrap_future(self._engine().call(loader))
            except Exception as exc:  # noqa: BLE001 — a broken checkpoint is a clear error, not a traceback
                raise ModelUnavailable(
                    f"cannot load MLX model '{name}' from {path}: {type(exc).__name__}: {exc}. Check that the "
                    f"directory holds an mlx-lm compatible checkpoint (config.json, *.safetensors, tokenizer).") \
                    from None
            cfg = loaded.config
            tokenizer = loaded.tokenizer
            template = getattr(tokenizer, "chat_template", None)
            try:
                parsers = select_parser(cfg.get("model_type"), template if isinstance(template, str) else None,
                                        self.config.tool_parser)
            except ValueError as exc:
                raise ModelUnavailable(str(exc)) from None
            context = self.config.context_window or _context_of(cfg) or DEFAULT_CONTEXT
            handle = ModelHandle(name, path, PromptRenderer(tokenizer, name, self.config.system_messages), parsers,
                                 context, tokenizer, _vocab_of(cfg, tokenizer),
                                 frozenset(getattr(tokenizer, "eos_token_ids", None) or ()))
            self._handles[name] = handle
            log.info("mlx_model_loaded", backend=self.name, model=name, path=str(path), context=context,
                     tool_parser=getattr(parsers, "name", None), seconds=round(time.perf_counter() - t0, 2))
            return handle

    def _loader(self, name: str, path: Path) -> Callable[[], LoadedModel]:
        """Runs on the engine thread: load weights + tokenizer and make the model resident."""
        engine = self._engine()

        def load() -> LoadedModel:
            existing = engine.touch(name)
            if existing is not None:
                return existing
            from mlx_lm import load as mlx_load
            # mlx_lm annotates both return shapes as one union; return_config=True is the 3-tuple.
            model, tokenizer, config = cast("tuple[Any, Any, dict]", mlx_load(str(path), return_config=True))
            loaded = LoadedModel(name, model, tokenizer, config)
            engine.install(loaded)
            return loaded

        return load

    async def _require(self, name: str) -> ModelHandle:
        """The model for a request; one that cannot be loaded now is a 500 with the reason."""
        try:
            return await self._model(name, download=self.options.download_on_demand or name in self._preloading)
        except NotLocal as exc:
            raise not_local_error(self.name, name, exc) from None
        except ModelUnavailable as exc:
            raise GatewayError(500, f"backend '{self.name}': {exc}") from None

    # -- prompts ------------------------------------------------------------------------------

    async def count_tokens(self, breq: BackendRequest) -> TokenCount:
        handle = await self._require(breq.model)
        prompt = await asyncio.to_thread(handle.renderer.render, breq.request)
        return TokenCount(len(prompt.tokens), exact=True, rendered=prompt)

    async def context_window(self, model: str) -> int | None:
        handle = self._handles.get(model)
        if handle is None and model in self._preloading:  # what its files say, without waiting for the load
            return self.config.context_window or window_on_disk(model)
        return (handle or await self._require(model)).context

    async def models(self) -> list[ModelInfo]:
        """Configured models; never loads one (a model not loaded yet reports what its local config says)."""
        return [ModelInfo(name, context_window=self._handles[name].context if name in self._handles
                          else self.config.context_window or _context_on_disk(name))
                for name in self.configured_models()]

    async def health(self) -> BackendHealth:
        engine = self.engine
        if engine is None or not engine.alive:
            detail = f"engine stopped: {engine.failed}" if engine is not None and engine.failed else "not started"
            return BackendHealth(False, detail)
        resident, active, entries, nbytes = engine.status
        ctx = self._handles[self.config.model].context if self.config.model in self._handles else None
        if engine.broken:
            return BackendHealth(False, "; ".join(f"{model}: {why}" for model, why in engine.broken.items()),
                                 self.configured_models(), ctx)
        detail = (f"resident: {', '.join(resident) or 'none'}; active requests: {active}; "
                  f"prompt cache: {entries} entries, {nbytes / 1e6:.1f} MB")
        # A model the engine thread has just installed is resident, though preload has not yet
        # resumed to take it off its list.
        loading = [m for m in self.loading() if m not in resident]
        if self._preload_failed:
            return BackendHealth(False, "; ".join(f"preload of {m} failed: {why}" for m, why in
                                                  self._preload_failed.items()) + f"; {detail}",
                                 self.configured_models(), ctx, list(resident), loading, list(self._preload_failed))
        return BackendHealth(True, detail, self.configured_models(), ctx, list(resident), loading)

    # -- generation ---------------------------------------------------------------------------

    async def stream(self, breq: BackendRequest) -> AsyncGenerator[list[Event], None]:
        req = breq.request
        handle = await self._require(breq.model)
        # The gateway counted this request while fitting max_tokens to the window (gateway.max_tokens).
        count = await self.counted(breq)
        prompt = count.rendered
        assert isinstance(prompt, Prompt)
        engine = self._engine()
        if not engine.alive:
            raise GatewayError(500, f"backend '{self.name}': the MLX engine stopped ({engine.failed})")
        processors: list[Callable] = []
        if self.options.eos_bias is not None:
            # Ahead of the schema mask, so an EOS the schema forbids stays forbidden.
            processors.append(EosBiasProcessor(handle.eos_ids, len(prompt.tokens), self.options.eos_bias))
        if req.json_schema is not None:
            processors.append(await asyncio.to_thread(json_schema_processor, handle.tokenizer, req.json_schema))
        job = Job(model_key=handle.name, prompt=prompt.tokens, max_tokens=breq.max_tokens,
                  sampler=_sampler(req, handle.vocab), session=breq.session_id, shared_len=prompt.shared_len,
                  loop=asyncio.get_running_loop(), logits_processors=processors or None,
                  reload=self._loader(handle.name, handle.path))
        engine.submit(job)
        try:
            yield [Started()]
            out = OutputPipeline(req, handle.parsers, tools=prompt.tools, start_in_thinking=prompt.starts_in_thinking)
            result: JobResult | None = None
            pending = None
            while result is None:
                item = pending if pending is not None else await job.queue.get()
                pending = None
                if type(item) is str:
                    # When the client reads slower than the engine writes, send what piled up as one delta.
                    while not job.queue.empty():
                        nxt = job.queue.get_nowait()
                        if type(nxt) is not str:
                            pending = nxt
                            break
                        item += nxt
                    events = out.feed(item)
                    if events:
                        yield events
                    if out.matched is not None:
                        engine.cancel(job)  # the rest would be thrown away
                elif type(item) is JobResult:
                    result = item
                elif isinstance(item, RequestFault):
                    raise GatewayError(400, str(item))  # names the parameter that failed
                else:
                    raise GatewayError(500, f"backend '{self.name}': generation failed: {item}")
            cut = result.finish_reason != "stop"
            tail = out.finish(cut=cut)
            tail.append(UsageReport(input_tokens=result.prompt_tokens, output_tokens=result.generated_tokens,
                                    cache_read_tokens=result.cached_tokens))
            tail.append(EngineStats(_round(result.prefill_tps), _round(result.decode_tps),
                                    round(result.peak_memory_mb, 1)))
            if out.matched is not None:
                tail.append(Stop("stop_sequence", out.matched))
            else:
                tail.append(Stop("max_tokens" if result.finish_reason == "length" else "end_turn"))
            yield tail
        finally:
            if not job.done:
                engine.cancel(job)  # client gone or stream abandoned: free the batch slot now


def _sampler(req, vocab: int) -> Callable | None:
    """The request's sampler, with its parameters put in the ranges mlx-lm accepts.

    The API takes any top_k ≥ 0, but mlx-lm raises for top_k ≥ the vocabulary; keeping every token
    is what such a top_k means, so it is dropped. top_p = 0 keeps only the most likely token.
    """
    from mlx_lm.sample_utils import make_sampler
    temp = 1.0 if req.temperature is None else float(req.temperature)
    if req.top_p == 0:
        temp = 0.0
    top_k = req.top_k if req.top_k is not None and 0 < req.top_k < vocab else 0
    return make_sampler(temp=temp, top_p=float(req.top_p or 0.0), top_k=top_k)


def _vocab_of(cfg: dict, tokenizer) -> int:
    """Rows of the output layer (config `vocab_size`), else the tokenizer's size."""
    for table in (cfg, cfg.get("text_config")):
        value = table.get("vocab_size") if isinstance(table, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return len(getattr(tokenizer, "vocab", None) or ()) or 1


def _context_on_disk(name: str) -> int | None:
    """The context length in a local model directory's config.json; None for hub ids or unreadable files."""
    path = Path(name).expanduser() / "config.json"
    try:
        cfg = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return _context_of(cfg) if isinstance(cfg, dict) else None


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)
