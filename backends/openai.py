"""Any OpenAI-compatible chat-completions server, through the official openai SDK.

Chunks are read from the raw streamed response and decoded with orjson: the SDK still does
transport, auth and status-error mapping, but no per-chunk pydantic objects are built.
"""
from __future__ import annotations

import asyncio
import codecs
import re
import time
from typing import AsyncIterator

import aiohttp
import httpx2
import openai
import orjson
import structlog

from backends.base import Backend, BackendHealth, BackendRequest, BackendUnavailable, ModelInfo, TokenCount
from backends.translate import ChunkTranslator, Dialect, UpstreamStreamError, to_openai
from gateway.anthropic import MessagesRequest
from gateway.config import BackendConfig
from gateway.errors import GatewayError, from_upstream
from gateway.events import Event, Started
from gateway.tokens import estimate_tokens

log = structlog.get_logger("backends.openai")

DISCOVERY_TTL_S = 30.0
PROBE_TIMEOUT_S = 3.0
# A chat template that raised while rendering (llama.cpp's "Jinja Exception: …", Python's
# jinja2 TemplateError): the same request fails the same way every time, so it is not retryable.
_TEMPLATE_ERROR_RE = re.compile(r"jinja|template ?error|chat template|raise_exception", re.IGNORECASE)
_CONTEXT_RE = re.compile(
    r"maximum context length is (\d+).*?(?:(\d+) (?:tokens )?in the messages|prompt contains at least (\d+))",
    re.S)


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
        self.root, self.api_base = split_base_url(config.base_url or "")
        self.dialect = Dialect(top_k=self.dialect.top_k, vision=config.vision,
                               thinking_switch=self.dialect.thinking_switch,
                               reasoning_history=self.dialect.reasoning_history,
                               reports_stop_string=self.dialect.reports_stop_string)
        key = config.resolved_api_key()
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = openai.AsyncOpenAI(
            api_key=key or "not-needed", base_url=self.api_base, max_retries=0,
            timeout=openai.Timeout(config.timeout_s, connect=min(10.0, config.timeout_s)),
            http_client=openai.DefaultAioHttpClient(),
        )
        self._http: aiohttp.ClientSession | None = None
        self._discovered: list[ModelInfo] = []
        self._discovered_at = 0.0
        self._discovery_lock = asyncio.Lock()

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def http(self) -> aiohttp.ClientSession:
        """Session for the server's own endpoints beyond chat completions."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(headers=self._headers)
        return self._http

    async def start(self) -> None:
        await self._discover(force=True)

    async def close(self) -> None:
        await self.client.close()
        if self._http is not None:
            await self._http.close()

    # -- generation ---------------------------------------------------------------------------

    def extra_fields(self, breq: BackendRequest) -> dict:
        """Server-specific request fields (subclasses add theirs)."""
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

    async def stream(self, breq: BackendRequest) -> AsyncIterator[Event]:
        extra = dict(self.config.extra_body)
        extra.update(self.extra_fields(breq))
        body = to_openai(breq, self.dialect, extra, await self.system_messages(breq.request, breq.model))
        try:
            resp = await self.client.post(
                "/chat/completions", cast_to=httpx2.Response,
                content=orjson.dumps(body), options={"headers": {"Content-Type": "application/json"}},
                stream=True)
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from None
        except openai.APITimeoutError as exc:
            if not _refused(exc):
                raise GatewayError(500, f"backend '{self.name}' ({self.api_base}) did not answer within "
                                        f"{self.config.timeout_s:g} s") from None
            # The aiohttp transport reports a refused connect as ConnectTimeout: say what happened.
            raise GatewayError(500, f"backend '{self.name}' at {self.api_base} is not reachable: "
                                    f"{_cause(exc)}") from None
        except openai.APIConnectionError as exc:
            raise GatewayError(500, f"backend '{self.name}' at {self.api_base} is not reachable: "
                                    f"{_cause(exc)}") from None
        yield Started()
        translator = ChunkTranslator(breq.request)
        finished = ended = False
        try:
            # All complete lines of one network read are decoded together and their events go out
            # as one list (one socket write downstream): fewer generator hops and send() calls per
            # chunk, and nothing waits for a later read, so streaming latency is unchanged.
            async for lines in sse_reads(resp):
                batch: list[Event] = []
                try:
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            finished = ended = True
                            break
                        try:
                            chunk = orjson.loads(data)
                        except orjson.JSONDecodeError:
                            chunk = self._decode_lenient(data)
                        if not isinstance(chunk, dict):
                            raise GatewayError(500, f"backend '{self.name}' sent a non-object stream chunk: "
                                                    f"{data[:200].decode(errors='replace')!r}")
                        batch += translator.feed(chunk)
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
            for ev in translator.finish():
                yield ev
        except UpstreamStreamError as exc:
            raise self._context_error(from_upstream(exc.status or 500, f"backend '{self.name}': {exc}")) from None
        except httpx2.TimeoutException:
            raise GatewayError(500, f"backend '{self.name}' stopped sending for {self.config.timeout_s:g} s") from None
        except httpx2.HTTPError as exc:
            raise GatewayError(500, f"backend '{self.name}' connection failed mid-stream: {exc or type(exc).__name__}") from None
        finally:
            await resp.aclose()

    def _decode_lenient(self, data: bytes) -> object:
        """A chunk that is not valid UTF-8 JSON: read it as a text decoder would (bad bytes → U+FFFD)."""
        text = data.decode("utf-8", "replace")
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            raise GatewayError(500, f"backend '{self.name}' sent a malformed stream chunk: {text[:200]!r}") from None

    def _status_error(self, exc: openai.APIStatusError) -> GatewayError:
        message = _error_message(exc)
        if exc.status_code == 500 and _TEMPLATE_ERROR_RE.search(message):
            return template_error(self.name, message)
        err = from_upstream(exc.status_code, f"backend '{self.name}' answered {exc.status_code}: {message}",
                            exc.response.headers.get("retry-after"))
        return self._context_error(err)

    @staticmethod
    def _context_error(err: GatewayError) -> GatewayError:
        """Upstream context-overflow messages become the text Claude Code reacts to."""
        text = err.message.lower()
        if err.status == 400 and any(s in text for s in ("context length", "context size", "context window",
                                                           "maximum context", "too long")):
            m = _CONTEXT_RE.search(err.message)
            if m:
                prompt = m.group(2) or m.group(3)
                return GatewayError(400, f"prompt is too long: {prompt} tokens > {m.group(1)} maximum")
            return GatewayError(400, f"prompt is too long for the backend's context window ({err.message})")
        return err

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
        try:
            models = await self._discover(force=True)
        except BackendUnavailable as exc:
            return BackendHealth(False, str(exc))
        ctx = self.config.context_window or next((m.context_window for m in models if m.context_window), None)
        return BackendHealth(True, "ok", [m.id for m in models], ctx)

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
            payload = await self.get_json(self.api_base + "/models")
            self._discovered = [self._model_info(item) for item in payload.get("data", [])
                                if isinstance(item, dict) and isinstance(item.get("id"), str)]
            await self.after_discovery()
            return self._discovered

    async def after_discovery(self) -> None:
        """Hook: fetch server facts that /v1/models does not carry."""

    def _model_info(self, item: dict) -> ModelInfo:
        created = item.get("created") if isinstance(item.get("created"), int) else None
        return ModelInfo(item["id"], created, self.config.context_window or _int(item.get("max_model_len")))

    async def get_json(self, url: str, *, body: dict | None = None, timeout: float = PROBE_TIMEOUT_S) -> dict:
        """GET (or POST when `body`) a JSON endpoint of the server; BackendUnavailable on any failure."""
        try:
            if body is None:
                req = self.http.get(url, timeout=aiohttp.ClientTimeout(total=timeout))
            else:
                req = self.http.post(url, data=orjson.dumps(body), headers={"Content-Type": "application/json"},
                                     timeout=aiohttp.ClientTimeout(total=timeout))
            async with req as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise BackendUnavailable(f"{url} answered {resp.status}: {raw[:200].decode(errors='replace')}",
                                             resp.status)
                data = orjson.loads(raw)
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError, OSError) as exc:
            raise BackendUnavailable(f"{url}: {type(exc).__name__} {exc}".strip()) from None
        if not isinstance(data, dict):
            raise BackendUnavailable(f"{url} did not return a JSON object")
        return data


async def sse_reads(resp: httpx2.Response) -> AsyncIterator[list[bytes]]:
    """The complete lines of each network read, as bytes, cut where SSE cuts them (CRLF, LF or CR)
    and nowhere else.

    httpx's aiter_lines uses str.splitlines, which also cuts at U+2028, U+2029 and U+0085: JSON
    carries those unescaped inside strings, so a chunk holding one arrived in two pieces. Bytes also
    skip a text-decoding pass per chunk; a body declared in another charset is transcoded to UTF-8.
    """
    charset = resp.encoding or "utf-8"
    transcode = codecs.lookup(charset).name != "utf-8"
    pending = b""
    async for data in resp.aiter_bytes():
        if pending:
            data = pending + data
        if b"\r" in data:
            held_cr = data.endswith(b"\r")  # maybe the first half of a CRLF split across reads
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if held_cr:
                data = data[:-1] + b"\r"
        lines = data.split(b"\n")
        pending = lines.pop()
        if lines:
            yield [line.decode(charset, "replace").encode() for line in lines] if transcode else lines
    if pending:
        line = pending[:-1] if pending.endswith(b"\r") else pending
        yield [line.decode(charset, "replace").encode() if transcode else line]


def template_error(backend: str, message: str) -> GatewayError:
    """A 400 for a conversation the backend's chat template refuses to render."""
    return GatewayError(400, f"backend '{backend}' cannot render this conversation with its chat template: "
                             f"{message}")


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


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
        if isinstance(body.get("detail"), str):
            return body["detail"]
    try:
        return exc.response.text[:500] or exc.message
    except Exception:  # a streamed error body may not be readable
        return exc.message
