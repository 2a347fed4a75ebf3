"""Hostile input against the embedded MLX backend, over HTTP with the generated demo model.

A request whose sampling or schema fails inside the engine fails alone: the requests batched with
it and every later one still generate, and /health tells when the model cannot. The prompt cache
never lets one session measure another's content through cache_read_input_tokens.
"""
from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm import load
from mlx_lm.sample_utils import make_sampler

from backends.mlx.cache import PromptCache
from backends.mlx.eos_bias import EosBiasProcessor
from demo_model.generate import DEMO_SYSTEM, SCRIPTS
from backends.mlx.engine import (
    Engine,
    EngineFault,
    Job,
    JobResult,
    LoadedModel,
    RequestFault,
)
from backends.mlx.options import EosBias
from tests.conftest import gateway_config
from tests.support.sse import parse_frames, read_until_event

ATTACK = {"model": "claude-x", "max_tokens": 5, "top_k": 100_000, "messages": [{"role": "user", "content": "hi"}]}
# llguidance compiles this, then gives up after the first token ("Too many items"): a schema that
# requires itself. Constrained decoding cannot go on, so the request must fail, alone.
SELF_REQUIRING = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}


def _sampled(**extra) -> dict:
    body = {"model": "claude-x", "max_tokens": 8, "temperature": 0.7,
            "messages": [{"role": "user", "content": "Say hello."}]}
    body.update(extra)
    return body


def _text(message: dict) -> str:
    return "".join(b["text"] for b in message["content"] if b["type"] == "text")


async def _health(gw) -> dict:
    return (await (await gw.get("/health")).json())["backends"]["m"]


async def test_top_k_over_the_vocabulary_then_sampled_requests_still_succeed(mlx_gw):
    gw = await mlx_gw()
    status, msg = await gw.messages(ATTACK)
    assert status == 200, msg  # the API takes any top_k ≥ 0: one at or above the vocabulary keeps every token
    assert msg["usage"]["output_tokens"] >= 1
    events = await gw.stream({**ATTACK, "top_k": 10**12, "temperature": 1.0})
    assert events[-1][0] == "message_stop", events
    for _ in range(6):
        status, msg = await gw.messages(_sampled())
        assert status == 200, msg
        assert msg["usage"]["output_tokens"] >= 1
    status, msg = await gw.messages(SCRIPTS["hello"].request())
    assert status == 200 and _text(msg) == SCRIPTS["hello"].answer
    assert (await _health(gw))["ok"]


async def test_attack_batched_with_a_normal_request_both_succeed(mlx_gw):
    gw = await mlx_gw()
    results = await asyncio.gather(gw.messages({**ATTACK, "temperature": 0.9}), gw.messages(_sampled()),
                                   gw.messages({**ATTACK, "top_k": 1024}), gw.messages(_sampled(top_k=5)))
    assert [r[0] for r in results] == [200, 200, 200, 200], results


@pytest.mark.parametrize(("extra", "field"), [
    ({"top_k": -1}, "top_k"), ({"top_k": 2.5}, "top_k"), ({"top_k": True}, "top_k"), ({"top_k": "40"}, "top_k"),
    ({"top_p": 1.5}, "top_p"), ({"top_p": -0.1}, "top_p"), ({"temperature": -0.5}, "temperature"),
    ({"temperature": "warm"}, "temperature"),
])
async def test_sampling_values_the_api_rejects_are_a_400_naming_the_field(mlx_gw, extra, field):
    gw = await mlx_gw()
    status, err = await gw.messages(_sampled(**extra))
    assert status == 400, err
    assert err["error"]["type"] == "invalid_request_error" and err["error"]["message"].startswith(field)
    status, msg = await gw.messages(_sampled())
    assert status == 200, msg


async def test_top_p_zero_is_greedy(mlx_gw):
    gw = await mlx_gw()
    status, msg = await gw.messages(SCRIPTS["count"].request(temperature=1.0, top_p=0))
    assert status == 200 and _text(msg) == SCRIPTS["count"].answer


async def test_schema_that_breaks_decoding_fails_alone_in_a_shared_batch(mlx_gw):
    gw = await mlx_gw()
    long_body = SCRIPTS["forever"].request(max_tokens=1500, stream=True)  # greedy: it never ends by itself
    resp = await gw.post("/v1/messages", long_body)
    assert resp.status == 200
    head = await read_until_event(resp.content, "content_block_delta")

    bad = {"model": "claude-haiku-4-5", "max_tokens": 50, "temperature": 0.7,
           "messages": [{"role": "user", "content": "Summarize this session in a title."}],
           "output_config": {"format": {"type": "json_schema", "schema": SELF_REQUIRING}}}
    (status, err), (ok_status, ok) = await asyncio.gather(gw.messages(bad), gw.messages(_sampled()))
    assert status == 400, err
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert err["error"]["message"].startswith("output_config.format.schema: constrained decoding failed")
    assert "Traceback" not in err["error"]["message"]
    assert ok_status == 200, ok

    streamed = await gw.post("/v1/messages", {**bad, "stream": True})
    assert streamed.status == 200
    frames = parse_frames(await streamed.text())
    assert frames[-1][0] == "error" and frames[-1][1]["error"]["type"] == "invalid_request_error", frames[-3:]

    # The long answer was in the same batch all along; it runs to its full length.
    frames = parse_frames((head + await resp.read()).decode())
    delta = [d for name, d in frames if name == "message_delta"]
    assert delta and delta[-1]["delta"]["stop_reason"] == "max_tokens", frames[-3:]
    assert delta[-1]["usage"]["output_tokens"] == 1500

    for _ in range(4):
        status, msg = await gw.messages(_sampled())
        assert status == 200, msg
    status, msg = await gw.messages(SCRIPTS["hello"].request())
    assert status == 200 and _text(msg) == SCRIPTS["hello"].answer
    assert (await _health(gw))["ok"]


def _broken_copy(src: Path, dst: Path) -> Path:
    """The demo checkpoint with one projection stored as complex64: it loads, but no forward pass runs."""
    shutil.copytree(src, dst)
    weights = mx.load(str(dst / "model.safetensors"))
    key = next(k for k in weights if k.endswith("q_proj.weight"))
    weights[key] = weights[key].astype(mx.complex64)
    mx.save_safetensors(str(dst / "model.safetensors"), weights)
    return dst


async def test_a_model_that_cannot_generate_shows_in_health(start_gateway, demo_model, tmp_path):
    broken = _broken_copy(demo_model, tmp_path / "broken")
    gw = await start_gateway(gateway_config({"m": {"type": "mlx", "model": str(broken)}}, default="m"))
    assert (await _health(gw))["ok"]  # loaded: nothing has tried to generate yet
    for _ in range(2):
        status, err = await gw.messages(_sampled())
        assert status == 500, err
        assert err["error"]["type"] == "api_error"
        assert "cannot generate" in err["error"]["message"] and "Traceback" not in err["error"]["message"]
    health = await _health(gw)
    assert health["ok"] is False
    assert "cannot generate" in health["detail"] and "rms_norm" in health["detail"]


async def _engine_with_demo(demo_model) -> tuple[Engine, LoadedModel, list[int]]:
    engine = Engine(PromptCache(64 << 20, 60), max_batch=4)

    def loader() -> LoadedModel:
        model, tokenizer = load(str(demo_model))
        lm = LoadedModel("m", model, tokenizer, {})
        engine.install(lm)
        return lm

    lm = await asyncio.wrap_future(engine.call(loader))
    chat = [{"role": "system", "content": DEMO_SYSTEM}, {"role": "user", "content": "Write noise for a while."}]
    # Rendered as the gateway renders SCRIPTS["forever"] (thinking off): greedy decoding never ends it.
    return engine, lm, list(lm.tokenizer.apply_chat_template(chat, add_generation_prompt=True,
                                                             enable_thinking=False))


async def _drain(job: Job) -> tuple[str, object]:
    """The text a job produced and what ended it (a JobResult or an exception)."""
    text = ""
    while True:
        item = await asyncio.wait_for(job.queue.get(), 60)
        if type(item) is str:
            text += item
        else:
            return text, item


async def test_an_out_of_range_sampler_fails_alone_and_later_sampling_works(demo_model):
    """The engine itself, handed the sampler mlx-lm builds for a top_k above the vocabulary (the backend
    clamps it first).

    mlx-lm raises inside an mx.compile trace, which used to leave mlx's random key a placeholder:
    every sampled request after it failed. Now only that request fails, with mlx-lm's message.
    """
    loop = asyncio.get_running_loop()
    engine, lm, prompt = await _engine_with_demo(demo_model)
    try:
        over = lm.model.args.vocab_size + 1000  # more than the vocabulary: mlx-lm refuses it
        bad = Job("m", prompt, 20, make_sampler(temp=0.7, top_k=over), "bad", 0, loop)
        # top_k=1: sampled (mlx's random key is used) yet certain to run the full length.
        good = Job("m", prompt, 20, make_sampler(temp=0.7, top_k=1), "good", 0, loop)
        engine.submit(bad)
        engine.submit(good)
        (_, bad_end), (_, good_end) = await asyncio.gather(_drain(bad), _drain(good))
        assert isinstance(bad_end, RequestFault) and "top_k" in str(bad_end), bad_end
        assert isinstance(good_end, JobResult) and good_end.generated_tokens == 20, good_end
        assert not good.resumed  # the batch never failed: the guard took the fault, the key was reseeded
        for i in range(3):
            later = Job("m", prompt, 5, make_sampler(temp=0.9, top_k=1), f"later-{i}", 0, loop)
            engine.submit(later)
            _, end = await _drain(later)
            assert isinstance(end, JobResult) and end.generated_tokens == 5, end
    finally:
        await asyncio.to_thread(engine.close)


async def test_a_step_nobody_is_blamed_for_resumes_the_others(demo_model):
    """The engine itself: a batch step that fails outside any guard is rebuilt and the others resume.

    The bad input is a logits processor that returns logits one column short: alone it would
    generate, batched with another request the step cannot concatenate the rows.
    """
    loop = asyncio.get_running_loop()
    engine, _, prompt = await _engine_with_demo(demo_model)
    try:
        good = Job("m", prompt, 60, make_sampler(temp=0.7, top_k=1), "good", 0, loop)
        bad = Job("m", prompt, 60, None, "bad", 0, loop,
                  logits_processors=[lambda _tokens, logits: logits[:, :-1]])
        engine.submit(good)
        engine.submit(bad)
        (good_text, good_end), (_, bad_end) = await asyncio.gather(_drain(good), _drain(bad))
        assert isinstance(bad_end, EngineFault), bad_end
        assert isinstance(good_end, JobResult), good_end
        assert good_end.finish_reason == "length" and good_end.generated_tokens == 60
        assert good.resumed and good_text
        assert engine.alive and not engine.broken
        again = Job("m", prompt, 5, make_sampler(temp=0.7, top_k=1), "again", 0, loop)
        engine.submit(again)
        _, end = await _drain(again)
        assert isinstance(end, JobResult) and end.generated_tokens == 5
    finally:
        await asyncio.to_thread(engine.close)


async def test_a_request_with_an_eos_bias_resumes_after_a_failed_step(demo_model):
    """The EOS bias is stateless (it counts the tokens after the prompt), so unlike a schema matcher
    it lets a rebuilt batch resume the request, and the resumed answer still ends where it should."""
    loop = asyncio.get_running_loop()
    engine, lm, prompt = await _engine_with_demo(demo_model)
    bias = EosBias(start=20, factor=1.25)  # EOS outweighs everything else 4 tokens past start
    try:
        biased = Job("m", prompt, 200, None, "biased", 0, loop,
                     logits_processors=[EosBiasProcessor(lm.tokenizer.eos_token_ids, len(prompt), bias)])
        bad = Job("m", prompt, 60, None, "bad", 0, loop, logits_processors=[lambda _tokens, logits: logits[:, :-1]])
        engine.submit(biased)
        engine.submit(bad)
        (text, end), (_, bad_end) = await asyncio.gather(_drain(biased), _drain(bad))
        assert isinstance(bad_end, EngineFault), bad_end
        assert isinstance(end, JobResult) and biased.resumed, end
        # Greedy, the prompt never ends by itself: only the bias, counted from the original prompt, ends it.
        assert end.finish_reason == "stop" and bias.start < end.generated_tokens <= bias.start + 4, end
        assert text
    finally:
        await asyncio.to_thread(engine.close)


# -- the prompt cache across sessions ------------------------------------------------------------

SECRET = "The vault code is 7Q4X-KZ19-PLM3-88RT. Keep it."


def _secret_body(content: str, **extra) -> dict:
    body = {"model": "claude-x", "max_tokens": 4, "temperature": 0, "system": DEMO_SYSTEM,
            "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    return body


async def test_another_session_cannot_measure_a_cached_secret(mlx_gw):
    gw = await mlx_gw()
    status, _ = await gw.messages(_secret_body(SECRET), **{"X-Claude-Code-Session-Id": "victim"})
    assert status == 200
    # The victim's own repeat reads its whole prompt from the cache.
    status, again = await gw.messages(_secret_body(SECRET), **{"X-Claude-Code-Session-Id": "victim"})
    prompt = again["usage"]["input_tokens"] + again["usage"]["cache_read_input_tokens"]
    assert again["usage"]["cache_read_input_tokens"] >= prompt - 2

    guesses = [SECRET, SECRET[:-6], SECRET[:30], SECRET[:22], "The vault code is 0000-0000.", "Unrelated words."]
    seen = []
    for i, guess in enumerate(guesses):
        for headers in ({"X-Claude-Code-Session-Id": f"attacker-{i}"}, {}):
            status, msg = await gw.messages(_secret_body(guess), **headers)
            assert status == 200, msg
            seen.append(msg["usage"]["cache_read_input_tokens"])
    # Right, nearly right and wrong guesses all read the same: at most the shared system prompt.
    assert len(set(seen)) == 1, seen
    assert seen[0] < prompt // 2, (seen, prompt)
    meta = {"user_id": json.dumps({"session_id": "attacker-meta"})}
    status, msg = await gw.messages(_secret_body(SECRET, metadata=meta))
    assert msg["usage"]["cache_read_input_tokens"] == seen[0]


async def test_a_session_keeps_its_turn_two_hit_and_the_shared_prefix_serves_others(mlx_gw):
    gw = await mlx_gw()
    sid = {"X-Claude-Code-Session-Id": "owner"}
    status, first = await gw.messages(_secret_body(SECRET, max_tokens=6), **sid)
    assert status == 200
    turn1 = first["usage"]["input_tokens"] + first["usage"]["cache_read_input_tokens"]
    body = _secret_body(SECRET, max_tokens=6)
    body["messages"] += [{"role": "assistant", "content": first["content"]},
                         {"role": "user", "content": "And again."}]
    status, second = await gw.messages(body, **sid)
    assert status == 200
    assert second["usage"]["cache_read_input_tokens"] >= turn1 - 8, (second["usage"], turn1)
    # A new session still skips the system prompt + tools (tools make that prefix long).
    status, _ = await gw.messages(SCRIPTS["weather"].request(), **{"X-Claude-Code-Session-Id": "t1"})
    other = SCRIPTS["weather"].request(messages=[{"role": "user", "content": "Something else."}], max_tokens=3)
    status, msg = await gw.messages(other, **{"X-Claude-Code-Session-Id": "t2"})
    assert status == 200 and msg["usage"]["cache_read_input_tokens"] > 50
    status, bare = await gw.messages(other)  # no session: the shared prefix too
    assert bare["usage"]["cache_read_input_tokens"] == msg["usage"]["cache_read_input_tokens"]


async def test_a_longer_system_prompt_does_not_read_a_shorter_shared_one(mlx_gw):
    """A shared prefix is read whole and only inside the reader's own system prompt: no prefix guessing."""
    gw = await mlx_gw()
    secret_system = DEMO_SYSTEM + " Internal note: the deploy key is K7-PLX-0042."
    body = _secret_body("Say hello.", system=secret_system, tools=[SCRIPTS["weather"].request()["tools"][0]])
    status, _ = await gw.messages(body, **{"X-Claude-Code-Session-Id": "ops"})
    assert status == 200
    reads = []
    for i, guess in enumerate((secret_system, secret_system[:-10], DEMO_SYSTEM + " Internal note: the")):
        status, msg = await gw.messages({**body, "system": guess}, **{"X-Claude-Code-Session-Id": f"g{i}"})
        assert status == 200
        reads.append(msg["usage"]["cache_read_input_tokens"])
    # Only the exact system prompt + tools is shared; a partial guess reads nothing of it.
    assert reads[0] > 20 and reads[1] == reads[2] == 0, reads


async def test_cache_across_sessions_is_an_explicit_opt_in(mlx_gw):
    gw = await mlx_gw(cache_across_sessions=True)
    await gw.messages(_secret_body(SECRET), **{"X-Claude-Code-Session-Id": "one"})
    status, msg = await gw.messages(_secret_body(SECRET), **{"X-Claude-Code-Session-Id": "two"})
    assert status == 200
    prompt = msg["usage"]["input_tokens"] + msg["usage"]["cache_read_input_tokens"]
    assert msg["usage"]["cache_read_input_tokens"] >= prompt - 2
