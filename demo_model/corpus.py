"""Text to train the demo tokenizer on, gathered on the spot from this machine: no download.

Claude Code's prompt is English prose, JSON Schema and code. The Python standard library that runs
the gateway holds all three (docstrings, the pydoc topic texts, code), so a BPE vocabulary trained
on it spends a token per word or identifier instead of one per one or two characters. A generated
part adds the chat template's scaffolding and JSON shapes; it is all there is where the standard
library ships without sources.
"""
from __future__ import annotations

import json
import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path

# Roughly what the tokenizer trainer reads: more text adds little once common words are merged.
STDLIB_CHARS = 12_000_000

_WORD_TEXT = """the a an of to in and or for with on at by from is are was be this that it as not you we they
file files read write edit run test tests code function class def return import module package path line
lines error errors fix bug change changes diff commit branch git python json tool tools call result
user assistant system model token tokens cache prompt request response stream server client http api
message messages content text name input output value values list dict string number true false null
please can could would should will let me see check look find search grep bash command shell directory
todo task plan step next first then done ok yes no here there what why how when where which who
weather city paris london tokyo temperature today hello world thanks help need want use using add
remove update create delete get set make new old small large data type types schema object array
description properties required additionalProperties items enum default boolean integer minimum
"""
_WORDS = _WORD_TEXT.split()


_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages"}


def _stdlib_files() -> list[Path]:
    """The standard library's text sources, in a fixed order (pydoc's topic texts first: plain English)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    topics = root / "pydoc_data" / "topics.py"
    files = [topics] if topics.is_file() else []
    for pattern in ("*.py", "*/*.py"):
        files += sorted(p for p in root.glob(pattern)
                        if p != topics and not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]))
    return files


def stdlib_text(limit: int = STDLIB_CHARS) -> Iterator[str]:
    """Up to `limit` characters of standard-library source, file by file."""
    left = limit
    for path in _stdlib_files():
        if left <= 0:
            return
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        yield text[:left]
        left -= len(text)


def generated_lines(seed: int, scaffolding: list[str]) -> list[str]:
    """Word salad in prose, JSON and code shapes, plus `scaffolding` (template text) often enough to merge."""
    rng = random.Random(seed)
    lines = []
    for _ in range(3000):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        kind = rng.random()
        if kind < 0.2:
            lines.append(json.dumps({rng.choice(_WORDS): " ".join(words[:3]), "n": rng.randint(0, 999)}))
        elif kind < 0.3:
            lines.append(f"def {words[0]}_{words[1]}({words[2]}):\n    return {words[3]}\n")
        else:
            lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ":", ",", "\n"]))
    lines.extend(scaffolding * 40)
    lines.extend(str(i) for i in range(200))
    return lines


def corpus(seed: int, scaffolding: list[str]) -> Iterator[str]:
    """Everything the tokenizer trains on."""
    yield from generated_lines(seed, scaffolding)
    yield from stdlib_text()
