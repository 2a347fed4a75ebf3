"""A self-made MLX model for offline use: `serve --demo`, the tests and the benchmark.

`ensure_demo_model()` writes (once) a Qwen3-architecture model with random weights, a byte-level
BPE tokenizer trained on the spot with `tokenizers`, and a Qwen3-style chat template that renders
tools and honours `enable_thinking`. mlx-lm loads it like any Hugging Face checkpoint, so every
real code path runs. The tiny model is then trained for a few seconds to memorise SCRIPTS: for
those exact requests it answers with a known text, tool call or thinking block (so tests can check
what a user would see); any other request gets a short fallback line (often garbled) or noise, and
ends, so Claude Code's own requests finish.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from demo_model.corpus import corpus, generated_lines, stdlib_text

DEMO_DIR_ENV = "CLAUDE_GATEWAY_DEMO_DIR"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
            "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
Progress = Callable[[str], None]
FORMAT_VERSION = 4  # bump when the generated files change shape


@dataclass(frozen=True)
class DemoSpec:
    """Shape of a generated model (the name is also its directory)."""

    name: str = "tiny"
    vocab_size: int = 16384
    hidden_size: int = 64
    num_hidden_layers: int = 1
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    max_position_embeddings: int = 65536
    seed: int = 0
    scripted: bool = True  # train the SCRIPTS answers in (the bench model stays purely random)


# Claude Code's whole prompt fits (tools and all) and prefills in seconds on a CPU. One layer: a
# prefill step only computes what the KV cache stores, and the last layer's keys and values never
# depend on attention, so prefill costs no attention at all (each further layer would add work
# quadratic in the prompt). A vocabulary large enough that English and code cost about a token
# per word keeps the prompt short.
TINY = DemoSpec()
# Big enough that CPU timings mean something, small enough for a 20k-token prefill on 2 cores.
BENCH = DemoSpec(name="bench", vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=64, intermediate_size=2048, max_position_embeddings=32768,
                 scripted=False)

CHAT_TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{{- "# Tools\\n<tools>" }}
{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}
{{- "\\n</tools>\\nTo call a function: <tool_call>\\n{\\"name\\": <name>, \\"arguments\\": <object>}\\n\
</tool_call><|im_end|>\\n" }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{%- set content = message.content or '' %}
{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}
{{- '<|im_start|>assistant\\n' + content }}
{%- for tool_call in message.tool_calls or [] %}
{%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}
{%- if loop.first and content or not loop.first %}{{- '\\n' }}{%- endif %}
{{- '<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' }}
{%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}
{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}
{%- endif %}"""

def _scaffolding() -> list[str]:
    """The template's own text and the scripts' tool JSON: merged into few tokens, so scripted prompts stay short."""
    scaffold = CHAT_TEMPLATE.replace("{{-", " ").replace("{%-", " ").replace("\\n", "\n")
    tool = json.dumps({"type": "function", "function": {"name": WEATHER_TOOL["name"],
                      "description": WEATHER_TOOL["description"], "parameters": WEATHER_TOOL["input_schema"]}})
    return [scaffold, tool, DEMO_SYSTEM]


def _train_tokenizer(spec: DemoSpec, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(spec.seed, _scaffolding()), trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "model_max_length": spec.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(tok.token_to_id(s)): {"content": s, "special": True, "lstrip": False,
                                                            "rstrip": False, "normalized": False,
                                                            "single_word": False} for s in SPECIALS},
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))


def _write_weights(spec: DemoSpec, out: Path, vocab_size: int, eos_id: int, progress: Progress) -> None:
    """Random weights (then, for a scripted spec, a few seconds of training on SCRIPTS)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import qwen3

    config = {
        "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_hidden_layers, "intermediate_size": spec.intermediate_size,
        "num_attention_heads": spec.num_attention_heads, "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim, "rms_norm_eps": 1e-6, "vocab_size": vocab_size,
        "max_position_embeddings": spec.max_position_embeddings, "tie_word_embeddings": True,
        "rope_theta": 1000000.0, "eos_token_id": eos_id, "torch_dtype": "float32",
    }
    mx.random.seed(spec.seed)
    model = qwen3.Model(qwen3.ModelArgs(**{k: v for k, v in config.items() if k not in
                                           ("architectures", "eos_token_id", "torch_dtype")}))
    (out / "config.json").write_text(json.dumps(config, indent=1))
    if spec.scripted:
        _train_scripts(model, _script_examples(out), progress)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})


DEMO_SYSTEM = "You are the claude-gateway demo model."
WEATHER_TOOL = {
    "name": "get_weather", "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                     "required": ["city"], "additionalProperties": False},
}
# `<think>` spelled as several ordinary tokens (not the special token): the tag arrives split.
_SPLIT_THINK = ("<", "th", "ink", ">")


@dataclass(frozen=True)
class Script:
    """A request the tiny model answers with `answer` (greedy decoding)."""

    name: str
    user: str
    answer: str | tuple[str, ...]  # a tuple is tokenized piece by piece
    tools: bool = False
    thinking: bool = False
    ends: bool = True  # False: trained without the end-of-turn token, so the answer goes on

    def request(self, **extra) -> dict:
        """The Anthropic request body (temperature 0) that triggers this answer."""
        body = {"model": "claude-sonnet-4-6", "max_tokens": 2048, "temperature": 0, "system": DEMO_SYSTEM,
                "messages": [{"role": "user", "content": self.user}]}
        if self.tools:
            body["tools"] = [WEATHER_TOOL]
        if self.thinking:
            body["thinking"] = {"type": "enabled", "budget_tokens": 1024}
        body.update(extra)
        return body


SCRIPTS = {s.name: s for s in (
    Script("hello", "Say hello.", "Hello! I am the claude-gateway demo model, running on MLX."),
    Script("count", "Count to five.", "one, two, three, four, five."),
    Script("forever", "Write noise for a while.", "la " * 200, ends=False),
    # Damaged on purpose (a string where the schema wants an integer, a trailing comma): the
    # gateway must repair it into {"city": "Paris", "days": 3}.
    Script("weather", "What is the weather in Paris for 3 days?",
           '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": "3",}}\n</tool_call>',
           tools=True),
    Script("invalid", "What is the weather in Rome?",
           '<tool_call>\n{"name": "get_weather", "arguments": {"town": 7}}\n</tool_call>', tools=True),
    Script("think", "Think first.", _SPLIT_THINK + ("\nThe user wants thoughts first.\n", "</think>",
                                                    "\n\nHere is my answer."), thinking=True),
    Script("think_hidden", "Think first.", _SPLIT_THINK + ("\nsecret plan\n", "</", "think", ">",
                                                           "\n\nVisible answer.")),
)}


# Every other request (Claude Code's own, for one) should get a short answer that ends, not noise
# until max_tokens: Claude Code treats an answer cut at max_tokens as an error. Trained on varied
# unscripted prompts, so the tiny model answers this to prompts it has never seen.
# Short, and no token in it is followed by another in any other answer: even sampled from a long
# prompt's washed-out context, each token leads to the next and the last to the end of the turn.
FALLBACK_ANSWER = "No script matched."
FALLBACK_PROMPTS = 8


@dataclass(frozen=True)
class _FallbackScript(Script):
    system: str = DEMO_SYSTEM
    tool_list: tuple = ()

    def request(self, **extra) -> dict:
        body = super().request(**extra)
        body["system"] = self.system
        if self.tool_list:
            body["tools"] = list(self.tool_list)
        return body


def _fallback_scripts(n: int, seed: int = 1) -> list[Script]:
    """Unscripted requests of many shapes (short and long system prompts, tools, thinking) → FALLBACK_ANSWER."""
    rng = random.Random(seed)
    lines = generated_lines(seed, [])
    prose = "".join(stdlib_text(100_000)) or "\n".join(lines)
    out: list[Script] = []
    for i in range(n):
        user = " ".join(rng.sample(lines, rng.randint(1, 3)))
        start = rng.randrange(max(1, len(prose) - 4000))
        system = DEMO_SYSTEM if i % 3 == 0 else prose[start:start + rng.choice((300, 1500, 3000))]
        tools: list[dict] = []
        if i % 2:
            tools = [{"name": "_".join(w for w in rng.choice(lines).lower().split()[:3] if w.isalpha()) + f"_{j}",
                      "description": rng.choice(lines),
                      "input_schema": {"type": "object", "properties": {w: {"type": "string"} for w in
                                                                        rng.choice(lines).split()[:3]}}}
                     for j in range(rng.randint(1, 6))]
        out.append(_FallbackScript(f"fallback{i}", user, FALLBACK_ANSWER, thinking=i % 4 == 1, system=system,
                                   tool_list=tuple(tools)))
    return out


def _script_examples(model_dir: Path) -> list[tuple[list[int], list[int]]]:
    """(prompt tokens, answer tokens + end of turn) per script, rendered exactly as the gateway renders."""
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    from backends.mlx.prompt import PromptRenderer
    from gateway.protocol.anthropic import parse_messages_request
    from gateway.normalize import normalize

    tok = load_tokenizer(model_dir)
    renderer = PromptRenderer(tok, "demo")
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    out = []
    for script in (*SCRIPTS.values(), *_fallback_scripts(FALLBACK_PROMPTS)):
        prompt = renderer.render(normalize(parse_messages_request(script.request())))
        pieces = (script.answer,) if isinstance(script.answer, str) else script.answer
        answer = [t for piece in pieces for t in tok.encode(piece, add_special_tokens=False)]
        out.append((prompt.tokens, answer + ([eos] if script.ends else [])))
    return out


def _train_scripts(model, examples: list[tuple[list[int], list[int]]], progress: Progress,
                   max_steps: int = 400) -> None:
    """Fit the answers (loss on answer tokens only) until greedy decoding reproduces every one."""
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx import nn

    # One unpadded row per script (padding would multiply the attention work), loss and output
    # projection only where an answer token is predicted.
    items = [(mx.array([(p + a)[:-1]]), len(p) - 1, mx.array(a)) for p, a in examples]
    total = sum(len(a) for _, a in examples)

    def answer_logits(m, x, start):
        return m.model.embed_tokens.as_linear(m.model(x)[0, start:])

    def loss_fn(m):
        return sum(nn.losses.cross_entropy(answer_logits(m, x, s), y).sum() for x, s, y in items) / total

    step = nn.value_and_grad(model, loss_fn)
    opt = optim.Adam(learning_rate=1e-2)
    for i in range(max_steps):
        loss, grads = step(model)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
        if i % 5 == 4:
            learned = sum(bool(mx.all(mx.argmax(answer_logits(model, x, s), axis=-1) == y).item())
                          for x, s, y in items)
            progress(f"training the scripted answers: step {i + 1}, {learned}/{len(items)} learned, "
                     f"loss {loss.item():.3f}")
            if learned == len(items):
                return
    raise RuntimeError(f"demo model did not learn its scripts in {max_steps} steps (loss {loss.item():.3f})")


def default_root() -> Path:
    """Where generated models live: $CLAUDE_GATEWAY_DEMO_DIR, else ~/.cache/claude-gateway."""
    env = os.environ.get(DEMO_DIR_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "claude-gateway"


def _generator_digest() -> str:
    """A digest of the generator's own source: new scripts, corpus or training never reuse an old model."""
    from demo_model import corpus

    h = hashlib.sha256()
    for module_file in (__file__, corpus.__file__):
        h.update(Path(module_file).read_bytes())
    return h.hexdigest()[:16]


def ensure_demo_model(spec: DemoSpec = TINY, root: str | Path | None = None,
                      progress: Progress | None = None) -> Path:
    """The directory of the generated model, generating it first when missing or stale.

    `progress` receives a line per stage (and per few training steps) while it is generated."""
    say = progress or (lambda _line: None)
    base = Path(root) if root is not None else default_root()
    target = base / f"demo-model-{spec.name}-v{FORMAT_VERSION}"  # older checkouts keep their own copy
    stamp = json.dumps({"format": FORMAT_VERSION, "generator": _generator_digest(), **asdict(spec)}, sort_keys=True)
    marker = target / "demo-spec.json"
    if marker.exists() and marker.read_text() == stamp:
        return target
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".demo-{spec.name}-", dir=base))
    started = time.monotonic()
    try:
        say(f"training a {spec.vocab_size}-token BPE vocabulary on local English and code text")
        _train_tokenizer(spec, work)
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(work / "tokenizer.json"))
        say(f"building the {spec.num_hidden_layers}-layer model ({spec.max_position_embeddings}-token context)")
        _write_weights(spec, work, tok.get_vocab_size(), tok.token_to_id("<|im_end|>"), say)
        (work / "demo-spec.json").write_text(stamp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)  # atomic: a concurrent reader sees the old model or the whole new one
        say(f"demo model ready in {time.monotonic() - started:.0f} s: {target}")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if marker.exists() and marker.read_text() == stamp:  # another process won the race
            return target
        raise
    return target
