"""`diff LOG_A LOG_B`: pair the requests of two logs of the same prompts and compare their answers."""
from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Iterator

import orjson

from tools.replay import Outcome, Result, compare_outcomes

# Fields that differ between two runs of the same prompt without making it another request.
_NOT_THE_PROMPT = ("model", "stream", "metadata")


def prompt_key(rec: dict) -> bytes:
    """What makes two records the same request: method, path and body, the model name aside."""
    body = rec.get("body")
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in _NOT_THE_PROMPT}
    raw = orjson.dumps([rec.get("method"), rec.get("path"), rec.get("query") or "", body],
                       option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.blake2b(raw, digest_size=16).digest()


def pair_logs(a: Iterable[tuple[bytes, dict]], b: Iterable[tuple[bytes, dict]], strict: bool = False,
              min_similarity: float | None = None) -> Iterator[Result]:
    """A Result per request of A (in A's order) against the same request in B (repeats pair in order),
    then the requests only B holds. Unpaired ones come back with `new` None and `skipped` saying where."""
    waiting: dict[bytes, deque] = {}
    for _, rec in b:
        if rec.get("event") == "request":
            # Kept small: the outcome (with its answer), not the body.
            waiting.setdefault(prompt_key(rec), deque()).append(
                (rec.get("request_id") or "?", rec.get("model"), Outcome.recorded(rec)))
    for _, rec in a:
        if rec.get("event") != "request":
            continue
        res = Result(request_id=rec.get("request_id") or "?", method=rec.get("method") or "POST",
                     path=rec.get("path") or "/", model=rec.get("model"), recorded=Outcome.recorded(rec))
        queue = waiting.get(prompt_key(rec))
        if not queue:
            res.skipped = "only in LOG_A"
            yield res
            continue
        res.other_request_id, model_b, res.new = queue.popleft()
        if model_b != res.model:
            res.model = f"{res.model or '-'}→{model_b or '-'}"
        res.regressions, res.answer = compare_outcomes(res.recorded, res.new, strict, min_similarity)
        yield res
    for queue in waiting.values():
        for request_id, model, outcome in queue:
            yield Result(request_id=request_id, method="-", path="-", model=model, recorded=outcome,
                         skipped="only in LOG_B")
