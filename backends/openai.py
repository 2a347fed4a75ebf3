"""Any OpenAI-compatible chat-completions server, through the official openai SDK.

Chunks are read from the raw streamed response and decoded with orjson: the SDK still does
transport, auth and status-error mapping, but no per-chunk pydantic objects are built.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import AsyncGenerator, TypeVar

import httpx2
import openai
import orjson
import structlog

from gateway.protocol.backend import Backend, BackendHealth, BackendRequest, BackendUnavailable, ModelInfo, TokenCount
from backends import chat_completion
from backends.openai_passthrough import passthrough
from backends.replicas import Replica, ReplicaPool, all_failed
from backends.sse_reader import LineTooLong, sse_reads
from backends.text_tool_calls import ToolCallTranslator
from backends.translate import ChunkTranslator, Dialect, UpstreamStreamError, to_openai
from backends.upstream_errors import answered_error, error_message, shorten, stream_error
from gateway.protocol.anthropic import MessagesRequest
from gateway.protocol.backend_config import BackendConfig
from gateway.protocol.errors import GatewayError
from gateway.protocol.events import Event, Started, TextDelta, ThinkingDelta, ToolCallDelta, ToolCallStart
from gateway.protocol.redact import scrub
from gateway.protocol.tokens import estimate_tokens

log = structlog.get_logger("backends.openai")

T = TypeVar("T")
# The replica a token count or template probe is being tried on (see OpenAIBackend.on_replicas).
_TRYING: ContextVar[Replica | None] = ContextVar("trying_replica", default=None)

DISCOVERY_TTL_S = 30.0
PROBE_TIMEOUT_S = 3.0
# What a broken or hostile upstream may make the gateway hold. A line carries one chunk (a whole
# tool call at most, for servers that do not stream arguments) and is decoded in one go on the
# event loop, so its cap also bounds that pause; an answer is bounded by max_tokens, far below its
# cap. Each cap ends the request with an api_error instead of stalling the server.
MAX_LINE_BYTES = 1024 * 1024
MAX_CALLS_PER_CHUNK = 64  # tool-call entries in one chunk (servers send one, or one per parallel call)
MAX_ANSWER_CHARS = 4 * 1024 * 1024  # text, thinking and tool arguments together
MAX_ERROR_BYTES = 64 * 1024  # of an error response body
MAX_JSON_BYTES = 8 * 1024 * 1024  # of a /models, /props or /tokenize answer (token lists are long)
# Of a non-streamed answer: its text as JSON escapes it, and llama.cpp's `__verbose` repeats it.
MAX_COMPLETION_BYTES = 4 * MAX_ANSWER_CHARS + MAX_LINE_BYTES


def split_base_url(url: str) -> tuple[str, str]:
    """(server root, OpenAI API base): accepts the URL with or without a trailing /v1."""
    url = url.rstrip("/")
    root = url[:-3] if url.endswith("/v1") else url
    return root, root + "/v1"


class OpenAIBackend(Backend):
    """A remote OpenAI-compatible server; vLLM and llama.cpp subclass it for their extras."""

    dialect = Dialect()

    def __init__(self, config: BackendConfig):
        super().__init__(config)
        self.dialect = Dialect(top_k=self.dialect.top_k, vision=config.vision,
                               thinking_switch=self.dialect.thinking_switch,
                               reasoning_history=self.dialect.reasoning_history,
                               reports_stop_string=self.dialect.reports_stop_string)
        self.key = config.resolved_api_key()
        self.secrets = config.secrets()
        urls = config.base_urls or [config.base_url or ""]
        auths = config.url_auths or [config.url_auth]
        self.pool: ReplicaPool[openai.AsyncOpenAI, httpx2.AsyncClient] = ReplicaPool(
            self.name, [self._replica(url, auth) for url, auth in zip(urls, auths)], probe=self._probe,
            redact=lambda text: scrub(text, self.secrets))
        self._discovered: list[ModelInfo] = []
        self._discovered_at = 0.0
        self._discovery_lock = asyncio.Lock()

    def _replica(self, url: str, auth: tuple[str, str] | None) -> Replica[openai.AsyncOpenAI, httpx2.AsyncClient]:
        """One server of the pool, with its own client (and its own credentials from its URL)."""
        root, api_base = split_base_url(url)
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        if auth is not None:  # user:password@ taken out of base_url by the config
            headers = {"Authorization": "Basic " + basic_credentials(*auth)}
        # Error statuses are read here, capped, instead of by the SDK (which reads the whole body);
        # redirects are not followed, as following one reads its whole body too.
        http = openai.DefaultAioHttpClient(event_hooks={"response": [self._refuse_status]}, follow_redirects=False)
        client = openai.AsyncOpenAI(
            api_key=self.key or "not-needed", base_url=api_base, max_retries=0, default_headers=headers,
            timeout=openai.Timeout(self.config.timeout_s, connect=min(10.0, self.config.timeout_s)),
            http_client=http,
        )
        return Replica(url=root, root=root, api_base=api_base, client=client, headers=headers, http=http)

    @property
    def root(self) -> str:
        """Server root of the replica `on_replicas` is trying, else of the first admitted one."""
        return (_TRYING.get() or self.pool.primary()).root

    async def on_replicas(self, breq: BackendRequest, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` (which reads `self.root`) on each replica in the request's order until one answers:
        one that is unreachable or answers 5xx is ejected and the next is tried."""
        errors: list[GatewayError] = []
        for replica in self.pool.order(breq.session_id):
            trying = _TRYING.set(replica)
            try:
                return await call()
            except GatewayError as err:
                if err.status < 500 or err.headers.get("x-should-retry") == "false":
                    raise
                self.pool.failed(replica, err.message[:300], eject=True)
                errors.append(err)
            finally:
                _TRYING.reset(trying)
        raise all_failed(self.name, len(self.pool), errors)

    @property
    def api_base(self) -> str:
        return self.pool.primary().api_base

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self._discover(force=True)

    async def close(self) -> None:
        await self.pool.close()
        for replica in self.pool.replicas:
            await replica.client.close()

    def replicas(self) -> list[dict] | None:
        return [r.state() for r in self.pool.replicas] if len(self.pool) > 1 else None

    # -- generation ---------------------------------------------------------------------------

    def extra_fields(self, breq: BackendRequest) -> dict:
        """Server-specific request fields (subclasses add theirs)."""
        return {}

    def replica_fields(self, breq: BackendRequest, replica: Replica) -> dict:
        """Request fields that depend on the replica serving it (subclasses add theirs)."""
        return {}

    async def system_messages(self, req: MessagesRequest, model: str) -> str:
        """The `system_messages` mode for `req` on `model`: the configured one, or what `auto` finds
        (asked only when the request has a system message after the first turn)."""
        mode = self.config.system_messages
        if mode != "auto" or not any(m.role == "system" for m in req.messages):
            return mode
        return await self.template_system_mode(model)

    async def template_system_mode(self, model: str) -> str:
        """Hook for `auto`: servers that expose their chat template find out what it accepts."""
        return "keep"

    async def stream(self, breq: BackendRequest) -> AsyncGenerator[list[Event], None]:
        try:
            extra = dict(self.config.extra_body)
            extra.update(self.extra_fields(breq))
            body = (passthrough(breq, extra) if breq.openai_body is not None
                    else to_openai(breq, self.dialect, extra, await self.system_messages(breq.request, breq.model)))
            if chat_completion.answers_whole(breq.request, self.dialect.reports_stop_string):
                body = chat_completion.whole_body(body)

            def chosen(replica: Replica) -> None:
                breq.replica = replica.url

            attempts = self.pool.failover(breq.session_id, lambda r: self._stream_from(r, breq, body),
                                          chosen if len(self.pool) > 1 else None)
            async with contextlib.aclosing(attempts):  # closed with this generator (a client that left)
                async for item in attempts:
                    yield item
        except GatewayError as err:  # upstream text may quote our key back (an echoed Authorization)
            raise GatewayError(err.status, scrub(err.message, self.secrets), err.type, err.headers) from None

    async def _stream_from(self, replica: Replica, breq: BackendRequest,
                           body: dict) -> AsyncGenerator[list[Event], None]:
        """One replica's answer: Started once it accepted, then its events."""
        fields = self.replica_fields(breq, replica)
        try:
            resp = await replica.client.post(
                "/chat/completions", cast_to=httpx2.Response,
                content=orjson.dumps({**body, **fields} if fields else body),
                options={"headers": {"Content-Type": "application/json"}}, stream=True)
        except _Refused as exc:
            raise exc.error from None
        except openai.APITimeoutError as exc:
            if not _refused(exc):
                raise GatewayError(500, f"backend '{self.name}' ({replica.api_base}) did not answer within "
                                        f"{self.config.timeout_s:g} s") from None
            # The aiohttp transport reports a refused connect as ConnectTimeout: say what happened.
            raise GatewayError(500, f"backend '{self.name}' at {replica.api_base} is not reachable: "
                                    f"{_cause(exc)}") from None
        except openai.APIConnectionError as exc:
            raise GatewayError(500, f"backend '{self.name}' at {replica.api_base} is not reachable: "
                                    f"{_cause(exc)}") from None
        # A server that streams although asked not to (a proxy that always does) is read as a stream.
        whole = not body["stream"] and not resp.headers.get("content-type", "").startswith("text/event-stream")
        yield [Started(whole=whole)]
        translator = ToolCallTranslator(ChunkTranslator(breq.request), breq.request, self.config.tool_parser, self.name)
        finished = ended = False
        answer_chars = 0
        try:
            if whole:
                yield await self._whole_answer(resp, translator)
                return
            # All complete lines of one network read are decoded together and their events go out
            # as one list (one socket write downstream): fewer generator hops and send() calls per
            # chunk, and nothing waits for a later read, so streaming latency is unchanged.
            async for lines in sse_reads(resp, MAX_LINE_BYTES):
                batch: list[Event] = []
                try:
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            finished = ended = True
                            break
                        chunk, events = self._events(translator, data)
                        answer_chars += _content_chars(translator.upstream_events)  # held calls count too
                        if answer_chars > MAX_ANSWER_CHARS:
                            raise GatewayError(500, f"backend '{self.name}' sent an answer longer than "
                                                    f"{MAX_ANSWER_CHARS} characters; it was cut off there")
                        batch += events
                        if translator.done:
                            finished = ended = True
                            break
                        if chunk.get("choices") and chunk["choices"][0].get("finish_reason"):
                            finished = True
                except Exception:
                    if batch:  # what came before the bad chunk still goes out first
                        yield batch
                    raise
                if batch:
                    yield batch
                if ended:
                    break
            if not finished:
                raise GatewayError(500, f"backend '{self.name}' closed its stream before finishing")
            tail = translator.finish()
            if tail:
                yield tail
        except LineTooLong as exc:
            raise GatewayError(500, f"backend '{self.name}' sent {exc}; the answer was cut off there") from None
        except UpstreamStreamError as exc:
            raise stream_error(self.name, exc.status, str(exc)) from None
        except httpx2.TimeoutException:
            raise GatewayError(500, f"backend '{self.name}' stopped sending for "
                                    f"{self.config.timeout_s:g} s") from None
        except httpx2.HTTPError as exc:
            raise GatewayError(500, f"backend '{self.name}' connection failed while sending its answer: "
                                    f"{exc or type(exc).__name__}") from None
        finally:
            await resp.aclose()

    def _events(self, translator: ToolCallTranslator, data: bytes) -> tuple[dict, list[Event]]:
        """One `data:` payload: the decoded chunk and its events; a clear error for a malformed one."""
        try:
            chunk = chat_completion.loads_lenient(data)
        except orjson.JSONDecodeError:
            raise GatewayError(500, f"backend '{self.name}' sent a malformed stream chunk: "
                                    f"{data.decode('utf-8', 'replace')[:200]!r}") from None
        if not isinstance(chunk, dict):
            raise GatewayError(500, f"backend '{self.name}' sent a non-object stream chunk: "
                                    f"{data[:200].decode(errors='replace')!r}")
        _check_calls(chunk, self.name)
        try:
            return chunk, translator.feed(chunk)
        except (AttributeError, TypeError, KeyError, IndexError):  # e.g. a list where "delta" belongs
            raise GatewayError(500, f"backend '{self.name}' sent a malformed stream chunk: "
                                    f"{data[:200].decode(errors='replace')!r}") from None

    async def _whole_answer(self, resp: httpx2.Response, translator: ToolCallTranslator) -> list[Event]:
        """All events of a non-streamed answer, its stop included: one batch."""
        try:
            return await self._read_whole_answer(resp, translator)
        except GatewayError as err:
            # The answer arrived and was refused for what it holds (size, call count, shape): another
            # replica or the fallback would only regenerate it, and this server is not at fault.
            err.headers.setdefault("x-should-retry", "false")
            raise

    async def _read_whole_answer(self, resp: httpx2.Response, translator: ToolCallTranslator) -> list[Event]:
        try:
            raw = await chat_completion.read_whole(resp, MAX_COMPLETION_BYTES, self.name)
        except (httpx2.TimeoutException, httpx2.HTTPError):
            raise  # the connection failed, not the answer: _stream_from maps it, and another replica may answer
        completion = chat_completion.decode(raw, self.name)
        chunk = chat_completion.as_chunk(completion)
        _check_calls(chunk, self.name)
        try:
            events = translator.feed(chunk)
        except (AttributeError, TypeError, KeyError, IndexError):  # e.g. a list where "message" belongs
            raise GatewayError(500, f"backend '{self.name}' sent a malformed answer: "
                                    f"{raw[:200].decode(errors='replace')!r}") from None
        if _content_chars(translator.upstream_events) > MAX_ANSWER_CHARS:
            raise GatewayError(500, f"backend '{self.name}' sent an answer longer than "
                                    f"{MAX_ANSWER_CHARS} characters; it was refused")
        return events + chat_completion.output_estimate(completion, translator.upstream_events) + translator.finish()

    async def _refuse_status(self, response: httpx2.Response) -> None:
        """httpx response hook: an error (or redirect) status becomes the client's error, read from at
        most MAX_ERROR_BYTES of the body."""
        status = response.status_code
        if status < 300 or not response.request.url.path.endswith("/chat/completions"):
            return  # the server's other endpoints (fetch_raw) read their own statuses
        raw = bytearray()
        try:
            async for data in response.aiter_bytes():
                raw += data
                if len(raw) >= MAX_ERROR_BYTES:
                    break
        except httpx2.HTTPError:
            pass  # the status alone still says what went wrong
        finally:
            await response.aclose()
        if status < 400:
            message = (f"a redirect to {shorten(response.headers.get('location', '?'))}, which the gateway "
                       "does not follow: set base_url to the final address")
        else:
            message = error_message(bytes(raw[:MAX_ERROR_BYTES]))
        raise _Refused(answered_error(self.name, status, message, response.headers.get("retry-after")))

    # -- tokens and models --------------------------------------------------------------------

    def count_failed(self, exc: BackendUnavailable) -> GatewayError:
        """The error for a token count the server could not give (down, or answering errors)."""
        if exc.status is None:
            return GatewayError(500, f"backend '{self.name}' at {self.root} is not reachable: {exc}")
        return GatewayError(500, f"backend '{self.name}' could not count tokens: {exc}")

    async def count_tokens(self, breq: BackendRequest) -> TokenCount:
        return TokenCount(estimate_tokens(breq.request), exact=False)

    async def context_window(self, model: str) -> int | None:
        if self.config.context_window:
            return self.config.context_window
        for info in await self._models_cached():
            if info.id == model and info.context_window:
                return info.context_window
        return None

    async def models(self) -> list[ModelInfo]:
        known = {m.id: m for m in await self._models_cached()}
        out = [known.pop(name, ModelInfo(name, context_window=self.config.context_window))
               for name in self.configured_models()]
        out.extend(known.values())
        return out

    async def health(self) -> BackendHealth:
        if len(self.pool) > 1:
            await self._probe_all()
        try:
            models = await self._discover(force=True)
        except BackendUnavailable as exc:
            return BackendHealth(False, str(exc))
        ctx = self.config.context_window or next((m.context_window for m in models if m.context_window), None)
        if len(self.pool) == 1:
            return BackendHealth(True, "ok", [m.id for m in models], ctx)
        up = sum(r.admitted for r in self.pool.replicas)
        return BackendHealth(up > 0, f"{up} of {len(self.pool)} replicas up", [m.id for m in models], ctx)

    async def _probe_all(self) -> None:
        """Probe every replica: one that does not answer is ejected, one that does is admitted."""
        async def one(replica: Replica) -> None:
            try:
                await self._probe(replica)
            except BackendUnavailable as exc:
                self.pool.failed(replica, f"probe: {exc}", eject=True)
            else:
                self.pool.admit(replica, "a health check answered")
        await asyncio.gather(*(one(r) for r in self.pool.replicas))

    async def _probe(self, replica: Replica) -> None:
        """Does the replica answer its model list? BackendUnavailable when not."""
        await self.get_json(replica.api_base + "/models")
        await self.probe_facts(replica)

    async def probe_facts(self, replica: Replica) -> None:
        """Hook: per-replica server facts, refreshed with each probe (llama.cpp's slot count)."""

    async def _models_cached(self) -> list[ModelInfo]:
        """Discovered models; refreshed in the background once stale so callers never wait long."""
        if time.monotonic() - self._discovered_at > DISCOVERY_TTL_S and not self._discovery_lock.locked():
            if self._discovered_at == 0.0:
                try:
                    await self._discover(force=True)
                except BackendUnavailable:
                    pass
            else:
                asyncio.get_running_loop().create_task(self._refresh_quietly())
        return self._discovered

    async def _refresh_quietly(self) -> None:
        try:
            await self._discover(force=True)
        except BackendUnavailable:
            pass

    async def _discover(self, force: bool = False) -> list[ModelInfo]:
        async with self._discovery_lock:
            if not force and time.monotonic() - self._discovered_at < DISCOVERY_TTL_S:
                return self._discovered
            self._discovered_at = time.monotonic()
            payload = await self._models_payload()
            # A model id quoting our key back is dropped: /health and /v1/models would show it.
            self._discovered = [self._model_info(item) for item in payload.get("data", [])
                                if isinstance(item, dict) and isinstance(item.get("id"), str)
                                and scrub(item["id"], self.secrets) == item["id"]]
            await self.after_discovery()
            return self._discovered

    async def _models_payload(self) -> dict:
        """/v1/models of the first replica that answers (config order, admitted ones first); those
        that do not answer are ejected on the way."""
        replicas = self.pool.replicas
        candidates = [r for r in replicas if r.admitted] + [r for r in replicas if not r.admitted]
        for replica in candidates[:-1]:
            try:
                return await self.get_json(replica.api_base + "/models")
            except BackendUnavailable as exc:
                self.pool.failed(replica, f"probe: {exc}", eject=True)
        return await self.get_json(candidates[-1].api_base + "/models")

    async def after_discovery(self) -> None:
        """Hook: fetch server facts that /v1/models does not carry."""

    def _model_info(self, item: dict) -> ModelInfo:
        created = item.get("created") if isinstance(item.get("created"), int) else None
        return ModelInfo(item["id"], created, self.config.context_window or _int(item.get("max_model_len")))

    async def get_json(self, url: str, *, body: dict | None = None, timeout: float = PROBE_TIMEOUT_S) -> dict:
        """GET (or POST when `body`) a JSON endpoint of the server; BackendUnavailable on any failure
        (its text scrubbed of this backend's secrets)."""
        try:
            return await self._get_json(url, body, timeout)
        except BackendUnavailable as exc:
            raise BackendUnavailable(scrub(str(exc), self.secrets), exc.status) from None

    def replica_for(self, url: str) -> Replica[openai.AsyncOpenAI, httpx2.AsyncClient]:
        """The replica `url` points into (each may carry its own user:password@), else the primary."""
        return next((r for r in self.pool.replicas if url.startswith(r.root + "/")), self.pool.primary())

    async def fetch_raw(self, url: str, body: dict | None, timeout: float, ok_limit: int) -> tuple[int, bytes]:
        """(status, at most ok_limit + 1 bytes of the body; MAX_ERROR_BYTES + 1 for an error status)
        of a GET (POST when `body`) to the server, through its replica's own client."""
        replica = self.replica_for(url)
        http = replica.http
        headers = dict(replica.headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = http.build_request("GET" if body is None else "POST", url, headers=headers,
                                     content=None if body is None else orjson.dumps(body),
                                     timeout=httpx2.Timeout(timeout))
        resp = await http.send(request, stream=True, follow_redirects=False)
        try:
            limit = (MAX_ERROR_BYTES if resp.status_code >= 300 else ok_limit) + 1
            raw = bytearray()
            async for data in resp.aiter_bytes():
                raw += data
                if len(raw) >= limit:
                    break
        finally:
            await resp.aclose()
        return resp.status_code, bytes(raw[:limit])

    async def _get_json(self, url: str, body: dict | None, timeout: float) -> dict:
        try:
            status, raw = await self.fetch_raw(url, body, timeout, MAX_JSON_BYTES)
            limit = MAX_ERROR_BYTES if status >= 300 else MAX_JSON_BYTES
            if status >= 300:
                raise BackendUnavailable(f"{url} answered {status}: {error_message(raw[:limit])}", status)
            if len(raw) > limit:
                raise BackendUnavailable(f"{url} answered with more than {limit} bytes")
            data = orjson.loads(raw)
        except (httpx2.HTTPError, asyncio.TimeoutError, orjson.JSONDecodeError, OSError) as exc:
            raise BackendUnavailable(f"{url}: {type(exc).__name__} {shorten(str(exc))}".strip()) from None
        if not isinstance(data, dict):
            raise BackendUnavailable(f"{url} did not return a JSON object")
        return data


class _Refused(openai.OpenAIError):
    """Raised by the response hook; the SDK passes its own error type through untouched."""

    def __init__(self, error: GatewayError):
        super().__init__(error.message)
        self.error = error


def basic_credentials(user: str, password: str) -> str:
    """The token of an `Authorization: Basic` header."""
    return base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _check_calls(chunk: dict, backend: str) -> None:
    """A chunk naming thousands of tool calls would cost the loop a pause per call: refused first."""
    choices = chunk.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        return
    delta = choices[0].get("delta")
    calls = delta.get("tool_calls") if isinstance(delta, dict) else None
    if isinstance(calls, list) and len(calls) > MAX_CALLS_PER_CHUNK:
        raise GatewayError(500, f"backend '{backend}' sent {len(calls)} tool calls at once "
                                f"(more than {MAX_CALLS_PER_CHUNK}); the answer was cut off there")


def _content_chars(events: list[Event]) -> int:
    """How much answer text a chunk's events carry (what a non-streaming answer accumulates)."""
    n = 0
    for ev in events:
        if type(ev) is TextDelta:
            n += len(ev.text)
        elif type(ev) is ToolCallDelta:
            n += len(ev.partial_json)
        elif type(ev) is ThinkingDelta:
            n += len(ev.thinking)
        elif type(ev) is ToolCallStart:
            n += len(ev.name) + 64  # a block of its own, whatever its name
    return n


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _refused(exc: BaseException) -> bool:
    """True when the cause chain holds a connect failure that is not a timeout (e.g. ECONNREFUSED)."""
    seen = exc.__cause__ or exc.__context__
    while seen is not None:
        if isinstance(seen, OSError) and not isinstance(seen, TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return f"{cause}" if cause else f"{exc}"
