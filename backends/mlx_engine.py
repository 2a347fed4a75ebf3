"""The MLX engine thread: one thread owns every mlx call; requests are batched continuously.

Each resident model has an mlx-lm `BatchGenerator`: new requests join the running batch (their
prefill is interleaved with the others' decode steps), finished or cancelled ones leave it. The
asyncio side talks to the thread through a command queue and gets text back on a per-request
asyncio.Queue, so the event loop never waits on mlx.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import mlx.core as mx
import structlog
from mlx_lm.generate import BatchGenerator, make_stop_sequences

from backends.mlx_cache import PromptCache

log = structlog.get_logger("backends.mlx")

# Text goes to the event loop at most this often (a request's first token and its end go at
# once): fewer loop wake-ups and SSE frames per token leave the CPU to the model, which on a
# 2-core machine is worth several percent of decode speed; 20 ms is below what a reader notices.
FLUSH_INTERVAL_S = 0.02


@dataclass
class LoadedModel:
    """A model resident in the engine, with its continuous batcher."""

    key: str
    model: Any
    tokenizer: Any  # mlx_lm TokenizerWrapper
    config: dict
    generator: BatchGenerator | None = None
    stops: Any = None
    jobs: dict[int, "Job"] = field(default_factory=dict)


@dataclass(slots=True)
class JobResult:
    """The last item a job's queue receives."""

    finish_reason: str  # stop | length | cancelled
    prompt_tokens: int
    cached_tokens: int
    generated_tokens: int
    prefill_tps: float | None
    decode_tps: float | None
    peak_memory_mb: float


@dataclass(eq=False)
class Job:
    """One generation request; the asyncio side reads `queue` (str chunks, then a JobResult or an exception)."""

    model_key: str
    prompt: list[int]
    max_tokens: int
    sampler: Callable | None
    session: str | None
    shared_len: int  # tokens of the prefix shared across sessions (snapshotted on the way); 0: none
    loop: asyncio.AbstractEventLoop
    logits_processors: list | None = None
    reload: Callable[[], LoadedModel] | None = None  # makes the model resident again if it was unloaded
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    # engine-side state
    uid: int | None = None
    cached: int = 0
    generated: int = 0
    detok: Any = None
    snapshot_pending: bool = False
    t_admit: float = 0.0
    t_first: float | None = None
    done: bool = False
    cancel_requested: bool = False
    sent_text: bool = False


class Engine:
    """Owns the mlx thread, the resident models and the prompt cache."""

    def __init__(self, cache: PromptCache, *, max_batch: int = 8, prefill_step: int = 512,
                 max_resident: int = 1):
        self.cache = cache
        self.max_batch = max_batch
        self.prefill_step = prefill_step
        self.max_resident = max_resident
        self.models: OrderedDict[str, LoadedModel] = OrderedDict()  # LRU order, most recent last
        self._cmds: queue.SimpleQueue = queue.SimpleQueue()
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[Job, Any]]] = {}
        self._urgent = False  # the outbox holds something that must not wait (first token, an end)
        self._last_flush = 0.0
        self._stopping = False
        self.failed: BaseException | None = None
        # Published by the engine thread after each step, read by health checks (an immutable tuple).
        self.status: tuple[tuple[str, ...], int, int, int] = ((), 0, 0, 0)
        self._thread = threading.Thread(target=self._run, name="mlx-engine", daemon=True)
        self._thread.start()

    # -- asyncio-facing API (any thread) ------------------------------------------------------

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn` on the engine thread (between generation steps); a Future of its result."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._cmds.put(("call", fn, fut))
        return fut

    def submit(self, job: Job) -> None:
        self._cmds.put(("submit", job))

    def cancel(self, job: Job) -> None:
        """Stop generating for `job` (its queue still gets a final JobResult)."""
        if not job.cancel_requested:
            job.cancel_requested = True
            self._cmds.put(("cancel", job))

    def close(self) -> None:
        self._stopping = True
        self._cmds.put(("stop",))
        self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.failed is None

    # -- model residency (engine thread) ------------------------------------------------------

    def install(self, loaded: LoadedModel) -> None:
        """Make `loaded` resident, unloading the least recently used idle models over the limit."""
        loaded.generator = BatchGenerator(loaded.model, completion_batch_size=self.max_batch,
                                          prefill_batch_size=min(self.max_batch, 8),
                                          prefill_step_size=self.prefill_step)
        loaded.stops = make_stop_sequences(loaded.tokenizer)
        self.models[loaded.key] = loaded
        self.models.move_to_end(loaded.key)
        for key in list(self.models):
            if len(self.models) <= self.max_resident:
                break
            victim = self.models[key]
            if key != loaded.key and not victim.jobs:
                self._unload(victim)

    def touch(self, key: str) -> LoadedModel | None:
        lm = self.models.get(key)
        if lm is not None:
            self.models.move_to_end(key)
        return lm

    def _unload(self, lm: LoadedModel) -> None:
        log.info("mlx_model_unloaded", model=lm.key)
        del self.models[lm.key]
        self.cache.drop_model(lm.key)
        if lm.generator is not None:
            lm.generator.close()
        lm.generator = None
        lm.model = None
        mx.clear_cache()

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                busy = any(lm.jobs for lm in self.models.values())
                try:
                    cmd = self._cmds.get(block=not busy)
                    while True:
                        self._handle(cmd)
                        cmd = self._cmds.get_nowait()
                except queue.Empty:
                    pass
                for lm in list(self.models.values()):
                    if lm.jobs:
                        self._step(lm)
                self._flush()
                self.status = (tuple(self.models), sum(len(lm.jobs) for lm in self.models.values()),
                               len(self.cache.entries), self.cache.nbytes)
        except BaseException as exc:  # noqa: BLE001 — the thread must report, not vanish
            self.failed = exc
            log.exception("mlx_engine_died")
            for lm in self.models.values():
                for job in list(lm.jobs.values()):
                    self._emit(job, RuntimeError(f"MLX engine stopped: {exc}"))
                    job.done = True
            self._flush(force=True)
        finally:
            for lm in list(self.models.values()):
                for job in lm.jobs.values():  # shut down mid-request: end those streams with an error
                    if not job.done:
                        self._emit(job, RuntimeError("the MLX engine was shut down"))
                        job.done = True
                if lm.generator is not None:
                    lm.generator.close()
            self._flush(force=True)
            self.models.clear()

    def _handle(self, cmd: tuple) -> None:
        kind = cmd[0]
        if kind == "submit":
            self._admit(cmd[1])
        elif kind == "cancel":
            self._cancel(cmd[1])
        elif kind == "call":
            _, fn, fut = cmd
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 — delivered to the caller
                    fut.set_exception(exc)
        elif kind == "stop":
            self._stopping = True

    def _admit(self, job: Job) -> None:
        lm = self.touch(job.model_key)
        if job.cancel_requested:
            self._finish(job, "cancelled")
            return
        try:
            if lm is None and job.reload is not None:
                lm = job.reload()
            if lm is None:
                raise RuntimeError(f"model {job.model_key} is not loaded")
        except Exception as exc:  # noqa: BLE001 — reported to this request only
            self._emit(job, exc)
            job.done = True
            return
        hit = self.cache.lookup(job.model_key, job.prompt, job.session)
        job.cached = hit.tokens
        rest = job.prompt[hit.tokens:]
        segments = [rest]
        if hit.tokens + 1 < job.shared_len < len(job.prompt) - 1:
            segments = [job.prompt[hit.tokens:job.shared_len], job.prompt[job.shared_len:]]
            job.snapshot_pending = True
        try:
            (uid,) = lm.generator.insert_segments(
                [segments], max_tokens=[job.max_tokens], caches=[hit.layers],
                all_tokens=[list(job.prompt[:hit.tokens])], samplers=[job.sampler],
                logits_processors=[job.logits_processors or []], stop_sequences=[lm.stops])
        except Exception as exc:  # noqa: BLE001 — a bad request must not kill the engine
            self._emit(job, exc)
            job.done = True
            return
        job.uid = uid
        job.detok = lm.tokenizer.detokenizer
        job.t_admit = time.perf_counter()
        lm.jobs[uid] = job

    def _cancel(self, job: Job) -> None:
        if job.done or job.uid is None:
            return  # not admitted yet: _admit sees cancel_requested
        lm = self.models.get(job.model_key)
        if lm is None or job.uid not in lm.jobs:
            return
        caches = lm.generator.remove([job.uid], return_prompt_caches=True)
        del lm.jobs[job.uid]
        got = caches.get(job.uid)
        if got is not None:
            layers, tokens = got
            if len(tokens) > job.cached:  # keep what was computed: a retry starts from here
                self._store(lm, list(tokens), layers, job.session)
        self._finish(job, "cancelled")

    def _step(self, lm: LoadedModel) -> None:
        try:
            prompt_resps, gen_resps = lm.generator.next()
        except Exception as exc:  # noqa: BLE001 — fail this model's requests, keep the engine
            log.exception("mlx_step_failed", model=lm.key)
            for job in lm.jobs.values():
                self._emit(job, exc)
                job.done = True
            lm.jobs.clear()
            lm.generator.close()
            self.install(lm)  # a fresh batcher; the model stays loaded
            return
        for r in prompt_resps:
            job = lm.jobs.get(r.uid)
            if job is not None and job.snapshot_pending and r.end_of_segment and not r.end_of_prompt:
                job.snapshot_pending = False
                got = lm.generator.extract_cache([r.uid]).get(r.uid)
                if got is not None:
                    self._store(lm, list(got[1]), got[0], None)
        for r in gen_resps:
            job = lm.jobs.get(r.uid)
            if job is None:
                continue
            if job.t_first is None:
                job.t_first = time.perf_counter()
            job.generated += 1
            if r.finish_reason != "stop":
                job.detok.add_token(r.token)
            if r.finish_reason is not None:
                job.detok.finalize()
            text = job.detok.last_segment
            if text:
                self._emit(job, text)
            if r.finish_reason is not None:
                del lm.jobs[r.uid]
                if r.finish_reason == "stop":
                    job.generated -= 1  # the end-of-turn token is not output
                self._store(lm, list(r.all_tokens), r.prompt_cache, job.session)
                self._finish(job, r.finish_reason)

    def _store(self, lm: LoadedModel, tokens: list[int], layers: list, session: str | None) -> None:
        mx.eval([c.state for c in layers])  # materialise: a lazy slice would pin the whole batch cache
        self.cache.insert(lm.key, tokens, layers, session)

    def _finish(self, job: Job, reason: str) -> None:
        now = time.perf_counter()
        prefill_tps = decode_tps = None
        if job.t_first is not None:
            computed = len(job.prompt) - job.cached
            prefill_tps = computed / max(job.t_first - job.t_admit, 1e-9)
            if job.generated > 1:
                decode_tps = (job.generated - 1) / max(now - job.t_first, 1e-9)
        job.done = True
        self._emit(job, JobResult(reason, len(job.prompt), job.cached, job.generated, prefill_tps, decode_tps,
                                  mx.get_peak_memory() / 1e6))

    def _emit(self, job: Job, item: Any) -> None:
        if type(item) is not str or not job.sent_text:
            self._urgent = True
            job.sent_text = job.sent_text or type(item) is str
        self._outbox.setdefault(job.loop, []).append((job, item))

    def _flush(self, force: bool = False) -> None:
        """Hand what was produced to the event loops, one wake-up per loop (see FLUSH_INTERVAL_S)."""
        if not self._outbox:
            return
        now = time.perf_counter()
        if not (force or self._urgent or now - self._last_flush >= FLUSH_INTERVAL_S):
            return
        self._last_flush, self._urgent = now, False
        outbox, self._outbox = self._outbox, {}
        for loop, items in outbox.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                for job, _ in items:
                    if not job.done:
                        self._cancel(job)


def _deliver(items: list[tuple[Job, Any]]) -> None:
    for job, item in items:
        job.queue.put_nowait(item)
