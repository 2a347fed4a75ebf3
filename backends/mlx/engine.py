"""The MLX engine thread: one thread owns every mlx call; requests are batched continuously.

Each resident model has an mlx-lm `BatchGenerator`: new requests join the running batch (their
prefill is interleaved with the others' decode steps), finished or cancelled ones leave it. The
asyncio side talks to the thread through a command queue and gets text back on a per-request
asyncio.Queue, so the event loop never waits on mlx.

Failures stay with their request: a request's sampler or logits processor that raises ends that
request only (the step goes on without it); a step that fails with no request to blame gets a
fresh batcher, a check that the model still generates, and the requests resume from the tokens
they already have. A model that cannot generate any more is reported through `broken`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import structlog
from mlx_lm.generate import BatchGenerator, make_stop_sequences
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.sample_utils import greedy_sampler

from backends.mlx.cache import PromptCache

log = structlog.get_logger("backends.mlx")

# Text goes to the event loop at most this often (a request's first token and its end go at
# once): fewer loop wake-ups and SSE frames per token leave the CPU to the model, which on a
# 2-core machine is worth several percent of decode speed; 20 ms is below what a reader notices.
FLUSH_INTERVAL_S = 0.02


class RequestFault(Exception):
    """This request's own sampler or logits processor failed: its client's error, not the engine's."""


class EngineFault(Exception):
    """Generation failed for a reason no single request is to blame for."""


@dataclass
class LoadedModel:
    """A model resident in the engine, with its continuous batcher."""

    key: str
    model: Any
    tokenizer: Any  # mlx_lm TokenizerWrapper
    config: dict
    generator: BatchGenerator | None = None
    stops: Any = None
    jobs: dict[int, Job] = field(default_factory=dict)
    broken: str | None = None  # why the last rebuild of the batcher could not generate; None: healthy

    @property
    def batch(self) -> BatchGenerator:
        """The continuous batcher: every model in Engine.models has one (install makes it, _unload drops both)."""
        assert self.generator is not None, f"model {self.key} is not resident"
        return self.generator


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
    out: list[int] = field(default_factory=list)  # generated token ids: a rebuilt batch resumes from them
    resumed: bool = False  # already survived one batch failure; a second one ends it
    fault: RequestFault | None = None  # set by its guarded sampler/processor inside a step
    detok: Any = None
    snapshot_pending: bool = False
    t_admit: float = 0.0
    t_first: float | None = None
    done: bool = False
    cancel_requested: bool = False
    sent_text: bool = False


@dataclass(frozen=True, slots=True)
class Call:
    """Run `fn` on the engine thread between steps; its result or exception goes to `future`."""

    fn: Callable[[], Any]
    future: concurrent.futures.Future


@dataclass(frozen=True, slots=True)
class Submit:
    """Admit `job` into its model's batch."""

    job: Job


@dataclass(frozen=True, slots=True)
class Cancel:
    """Take `job` out of its batch (its queue still gets a final JobResult)."""

    job: Job


@dataclass(frozen=True, slots=True)
class Stop:
    """End the engine thread after the commands already queued."""


Command = Call | Submit | Cancel | Stop


class Engine:
    """Owns the mlx thread, the resident models and the prompt cache."""

    def __init__(self, cache: PromptCache, *, max_batch: int = 8, prefill_step: int = 512,
                 max_resident: int = 1):
        self.cache = cache
        self.max_batch = max_batch
        self.prefill_step = prefill_step
        self.max_resident = max_resident
        self.models: OrderedDict[str, LoadedModel] = OrderedDict()  # LRU order, most recent last
        self._cmds: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[Job, Any]]] = {}
        self._urgent = False  # the outbox holds something that must not wait (first token, an end)
        self._last_flush = 0.0
        self._stopping = False
        self.failed: BaseException | None = None
        # Published by the engine thread after each step, read by health checks (an immutable tuple).
        self.status: tuple[tuple[str, ...], int, int, int] = ((), 0, 0, 0)
        self.broken: dict[str, str] = {}  # model → why it cannot generate (replaced whole, never mutated)
        self._thread = threading.Thread(target=self._run, name="mlx-engine", daemon=True)
        self._thread.start()

    # -- asyncio-facing API (any thread) ------------------------------------------------------

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn` on the engine thread (between generation steps); a Future of its result."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._cmds.put(Call(fn, fut))
        return fut

    def submit(self, job: Job) -> None:
        self._cmds.put(Submit(job))

    def cancel(self, job: Job) -> None:
        """Stop generating for `job` (its queue still gets a final JobResult)."""
        if not job.cancel_requested:
            job.cancel_requested = True
            self._cmds.put(Cancel(job))

    def close(self) -> None:
        self._stopping = True
        self._cmds.put(Stop())
        self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.failed is None

    # -- model residency (engine thread) ------------------------------------------------------

    def install(self, loaded: LoadedModel) -> None:
        """Make `loaded` resident, unloading the least recently used idle models over the limit."""
        self._new_generator(loaded)
        loaded.stops = make_stop_sequences(loaded.tokenizer)
        self.models[loaded.key] = loaded
        self.models.move_to_end(loaded.key)
        for key in list(self.models):
            if len(self.models) <= self.max_resident:
                break
            victim = self.models[key]
            if key != loaded.key and not victim.jobs:
                self._unload(victim)

    def _new_generator(self, lm: LoadedModel) -> None:
        lm.generator = BatchGenerator(lm.model, completion_batch_size=self.max_batch,
                                      prefill_batch_size=min(self.max_batch, 8),
                                      prefill_step_size=self.prefill_step)

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
                        try:
                            self._step(lm)
                        except Exception as exc:  # noqa: BLE001 — rebuild this model's batch, keep the engine
                            self._recover(lm, exc)
                self._flush()
                self._publish_status()
                broken = {key: lm.broken for key, lm in self.models.items() if lm.broken}
                if broken != self.broken:
                    self.broken = broken
        except BaseException as exc:
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

    def _publish_status(self) -> None:
        """What /health reads without asking the engine thread (one tuple swap: no lock needed)."""
        self.status = (tuple(self.models), sum(len(lm.jobs) for lm in self.models.values()),
                       len(self.cache.entries), self.cache.nbytes)

    def _handle(self, cmd: Command) -> None:
        match cmd:
            case Submit(job):
                self._for_job(job, self._admit)
            case Cancel(job):
                self._for_job(job, self._cancel)
            case Call(fn, fut):
                if fut.set_running_or_notify_cancel():
                    try:
                        result = fn()
                    except BaseException as exc:  # noqa: BLE001 — delivered to the caller
                        fut.set_exception(exc)
                    else:
                        # Before the caller wakes: a load it awaited shows in /health at once.
                        self._publish_status()
                        fut.set_result(result)
            case Stop():
                self._stopping = True

    def _for_job(self, job: Job, action: Callable[[Job], None]) -> None:
        try:
            action(job)
        except Exception as exc:  # noqa: BLE001 — this request ends; the engine and the batch go on
            log.error("mlx_request_failed", model=job.model_key, error=_brief(exc))
            self._drop(job)
            if not job.done:
                self._fail(job, EngineFault(_brief(exc)))

    def _admit(self, job: Job) -> None:
        lm = self.touch(job.model_key)
        if job.cancel_requested:
            self._finish(job, "cancelled")
            return
        try:
            if lm is None and job.reload is not None:
                lm = job.reload()
            if lm is None:
                raise EngineFault(f"model {job.model_key} is not loaded")
            if lm.broken is not None:
                self._rebuild(lm)  # it may have recovered (memory freed); else this request learns why
        except Exception as exc:  # noqa: BLE001 — reported to this request only
            self._fail(job, exc)
            return
        if job.sampler is not None and job.sampler is not greedy_sampler:  # greedy ones share one batched call
            job.sampler = _Guard(job, job.sampler, greedy_sampler)
        job.logits_processors = [_Guard(job, p, _unchanged) for p in job.logits_processors or ()]
        hit = self.cache.lookup(job.model_key, job.prompt, job.session, job.shared_len)
        job.cached = hit.tokens
        rest = job.prompt[hit.tokens:]
        segments = [rest]
        if hit.tokens + 1 < job.shared_len < len(job.prompt) - 1:
            segments = [job.prompt[hit.tokens:job.shared_len], job.prompt[job.shared_len:]]
            job.snapshot_pending = True
        if self._insert(lm, job, segments, hit.layers, job.prompt[:hit.tokens], job.max_tokens):
            job.detok = lm.tokenizer.detokenizer
            job.t_admit = time.perf_counter()

    def _insert(self, lm: LoadedModel, job: Job, segments: list[list[int]], layers: list | None,
                cached: list[int], max_tokens: int) -> bool:
        """Add `job` to the model's batch; a request the batcher refuses fails alone."""
        try:
            # None entries mean "the batcher's default" (as its own defaults do), though mlx_lm's
            # annotations leave None out of the lists.
            (uid,) = lm.batch.insert_segments(
                [segments], max_tokens=[max_tokens], caches=[layers],  # type: ignore[list-item]
                all_tokens=[list(cached)],
                samplers=[job.sampler], logits_processors=[job.logits_processors],  # type: ignore[list-item]
                stop_sequences=[lm.stops])
        except Exception as exc:  # noqa: BLE001 — a bad request must not kill the engine
            self._fail(job, EngineFault(f"the batcher refused the request: {_brief(exc)}"))
            return False
        job.uid = uid
        lm.jobs[uid] = job
        return True

    def _cancel(self, job: Job) -> None:
        if job.done or job.uid is None:
            return  # not admitted yet: _admit sees cancel_requested
        lm = self.models.get(job.model_key)
        if lm is None or job.uid not in lm.jobs:
            return
        caches = lm.batch.remove([job.uid], return_prompt_caches=True)
        del lm.jobs[job.uid]
        got = caches.get(job.uid)
        if got is not None:
            layers, tokens = got
            if len(tokens) > job.cached:  # keep what was computed: a retry starts from here
                self._store(lm, list(tokens), layers, job.session)
        self._finish(job, "cancelled")

    def _step(self, lm: LoadedModel) -> None:
        """One batch step. An exception out of here has no request to blame: _run hands it to _recover."""
        prompt_resps, gen_resps = lm.batch.next()
        for faulty, fault in [(j, j.fault) for j in lm.jobs.values() if j.fault is not None]:
            # Its guard stood in for the failed call, so the step of the others is sound.
            log.warning("mlx_request_fault", model=lm.key, error=str(fault))
            self._drop(faulty)
            self._fail(faulty, fault)
        for r in prompt_resps:
            job = lm.jobs.get(r.uid)
            if job is not None and job.snapshot_pending and r.end_of_segment and not r.end_of_prompt:
                job.snapshot_pending = False
                got = lm.batch.extract_cache([r.uid]).get(r.uid)
                if got is not None:
                    self._store(lm, list(got[1]), got[0], None, shared=True)
        for r in gen_resps:
            job = lm.jobs.get(r.uid)
            if job is None:
                continue
            try:
                self._deliver_token(lm, job, r)
            except Exception as exc:  # noqa: BLE001 — e.g. a token the tokenizer cannot decode: this job only
                log.warning("mlx_output_failed", model=lm.key, error=_brief(exc))
                self._drop(job)
                self._fail(job, EngineFault(f"decoding the model's output failed: {_brief(exc)}"))

    def _deliver_token(self, lm: LoadedModel, job: Job, r: Any) -> None:
        if job.t_first is None:
            job.t_first = time.perf_counter()
        job.generated += 1
        if r.finish_reason != "stop":
            job.detok.add_token(r.token)
            job.out.append(r.token)
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

    def _recover(self, lm: LoadedModel, exc: Exception) -> None:
        """A step failed with no request to blame: a fresh batcher, and the requests resume in it."""
        log.error("mlx_step_failed", model=lm.key, error=_brief(exc), requests=len(lm.jobs))
        jobs = list(lm.jobs.values())
        lm.jobs.clear()
        try:
            self._rebuild(lm)
        except Exception as broken:  # noqa: BLE001 — every request of this model ends; /health says why
            for job in jobs:
                self._fail(job, broken)
            return
        for job in jobs:
            if job.fault is not None:
                self._fail(job, job.fault)
                continue
            remaining = job.max_tokens - job.generated
            # A second failure, or a processor whose state cannot be replayed: end it, not the batch.
            if job.resumed or not _replayable(job) or remaining <= 0:
                self._fail(job, EngineFault(f"generation failed: {_brief(exc)}"))
                continue
            job.resumed = True
            tokens = job.prompt + job.out
            try:
                hit = self.cache.lookup(job.model_key, tokens, job.session, job.shared_len)
            except Exception as lookup_exc:  # noqa: BLE001
                self._fail(job, EngineFault(f"generation failed: {_brief(lookup_exc)}"))
                continue
            self._insert(lm, job, [tokens[hit.tokens:]], hit.layers, tokens[:hit.tokens], remaining)

    def _rebuild(self, lm: LoadedModel) -> None:
        """Restore mlx's state and a fresh batcher, then prove that the model can generate."""
        _repair_random_state()
        if lm.generator is not None:
            try:
                lm.generator.close()
            except Exception:  # noqa: BLE001, S110 — the old batcher is being thrown away
                pass
        try:
            self._new_generator(lm)
            _probe(lm.model)
        except Exception as exc:  # noqa: BLE001
            lm.broken = f"the model cannot generate: {_brief(exc)}"
            log.error("mlx_engine_broken", model=lm.key, error=lm.broken)
            raise EngineFault(lm.broken) from None
        if lm.broken is not None:
            log.info("mlx_engine_recovered", model=lm.key)
        lm.broken = None

    def _store(self, lm: LoadedModel, tokens: list[int], layers: list, session: str | None,
               shared: bool = False) -> None:
        if session is None and not shared and not self.cache.across_sessions:
            return  # nobody may read it (PromptCache.insert): skip the materialising too
        mx.eval([c.state for c in layers])  # materialise: a lazy slice would pin the whole batch cache
        self.cache.insert(lm.key, tokens, layers, session, shared)

    def _drop(self, job: Job) -> None:
        """Take `job` out of its batch, if it is in one."""
        lm = self.models.get(job.model_key)
        if lm is not None and job.uid is not None and lm.jobs.get(job.uid) is job:
            del lm.jobs[job.uid]
            try:
                lm.batch.remove([job.uid])
            except Exception:  # noqa: BLE001, S110 — the next step's failure, if any, rebuilds the batch
                pass

    def _fail(self, job: Job, exc: BaseException) -> None:
        job.done = True
        self._emit(job, exc)

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


class _Guard:
    """A request's sampler or logits processor, run inside the shared step.

    An exception (e.g. mlx-lm's top_k range check) is kept on the job and a harmless stand-in
    result lets the step finish, so only that request fails; the job leaves the batch right after.
    """

    __slots__ = ("fallback", "fn", "job")

    def __init__(self, job: Job, fn: Callable, fallback: Callable):
        self.job, self.fn, self.fallback = job, fn, fallback

    def __call__(self, *args):
        if self.job.fault is None:
            try:
                return self.fn(*args)
            except Exception as exc:  # noqa: BLE001 — attributed to this request
                self.job.fault = RequestFault(_first_line(exc))
                _repair_random_state()  # an exception inside an mx.compile trace leaves a placeholder there
        return self.fallback(*args)


def _replayable(job: Job) -> bool:
    """Can a rebuilt batch resume `job`? Only if each of its logits processors says so (`replayable`):
    one that keeps state across calls, such as a schema matcher, would start over mid-answer."""
    return all(getattr(getattr(p, "fn", p), "replayable", False) for p in job.logits_processors or ())


def _unchanged(_tokens: mx.array, logits: mx.array) -> mx.array:
    return logits


def _repair_random_state() -> None:
    """Reseed when mlx's global random key is a leftover trace placeholder (every sampler would fail)."""
    try:
        mx.eval(mx.random.state)
    except Exception:  # noqa: BLE001 — "eval an array without a primitive"
        log.warning("mlx_random_state_reset")
        mx.random.seed(int.from_bytes(os.urandom(4), "little"))


def _probe(model: Any) -> None:
    """One forward pass and one sampled token on a scratch cache: raises if the model cannot generate."""
    cache = make_prompt_cache(model)
    logits = model(mx.array([[0]]), cache=cache)[:, -1, :]
    mx.eval(mx.random.categorical(logits))


def _first_line(exc: BaseException) -> str:
    """mlx messages run on with links and advice; the first line says what happened."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _deliver(items: list[tuple[Job, Any]]) -> None:
    for job, item in items:
        job.queue.put_nowait(item)
