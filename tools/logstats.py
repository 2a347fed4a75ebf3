"""The summary of a set of request-log records: counts, latency and TTFT percentiles, errors."""
from __future__ import annotations

from array import array
from dataclasses import dataclass, field


def percentile(values: array | list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values; None when there are none."""
    return percentiles(values, q)[0]


def percentiles(values: array | list[float], *qs: float) -> list[float | None]:
    """Several nearest-rank percentiles from one sort."""
    if not values:
        return [None] * len(qs)
    ordered = sorted(values)
    # rank = ceil(n*q/100), at least the first
    return [ordered[int(max(1, -(-len(ordered) * q // 100))) - 1] for q in qs]


@dataclass
class _Group:
    """Per-model numbers."""

    count: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    latency: array = field(default_factory=lambda: array("d"))
    ttft: array = field(default_factory=lambda: array("d"))

    def to_dict(self) -> dict:
        p50, p95 = percentiles(self.latency, 50, 95)
        t50, t95 = percentiles(self.ttft, 50, 95)
        return {"count": self.count, "errors": self.errors, "p50_ms": p50, "p95_ms": p95,
                "ttft_p50_ms": t50, "ttft_p95_ms": t95,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens}


@dataclass
class Summary:
    """Folds records one at a time; `to_dict` is the summary the CLI prints."""

    records: int = 0
    first_ts: str | None = None
    last_ts: str | None = None
    status: dict[int, int] = field(default_factory=dict)
    backends: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    models: dict[str, _Group] = field(default_factory=dict)
    unknown: dict[tuple[str, str], list] = field(default_factory=dict)  # (method, path) → [count, last ts]

    def add(self, rec: dict) -> None:
        """Count one record (the hot loop of a summary: plain dicts, one lookup per field)."""
        get = rec.get
        self.records += 1
        ts = get("ts")
        if ts:
            if self.first_ts is None or ts < self.first_ts:
                self.first_ts = ts
            if self.last_ts is None or ts > self.last_ts:
                self.last_ts = ts
        status = get("status") or 0
        self.status[status] = self.status.get(status, 0) + 1
        err = get("error")
        if err:
            kind = (err.get("type") if isinstance(err, dict) else None) or "unknown"
            self.errors[kind] = self.errors.get(kind, 0) + 1
        if get("event") == "unknown_route":
            entry = self.unknown.setdefault((get("method") or "?", get("path") or "?"), [0, ts])
            entry[0] += 1
            entry[1] = ts
            return
        backend = get("backend") or "-"
        self.backends[backend] = self.backends.get(backend, 0) + 1
        model = get("model") or "-"
        g = self.models.get(model)
        if g is None:
            g = self.models[model] = _Group()
        g.count += 1
        if err or status >= 400:
            g.errors += 1
        n = get("input_tokens")
        if n:
            g.input_tokens += n
        n = get("output_tokens")
        if n:
            g.output_tokens += n
        v = get("duration_ms")
        if v is not None:
            g.latency.append(v)
        v = get("ttft_ms")
        if v is not None:
            g.ttft.append(v)

    def total(self) -> _Group:
        """All models together."""
        t = _Group()
        for g in self.models.values():
            t.count += g.count
            t.errors += g.errors
            t.input_tokens += g.input_tokens
            t.output_tokens += g.output_tokens
            t.latency.extend(g.latency)
            t.ttft.extend(g.ttft)
        return t

    def to_dict(self) -> dict:
        """The summary as plain JSON-able data."""
        tg = self.total()
        total = tg.to_dict()
        return {
            "records": self.records,
            "requests": tg.count,
            "unknown_routes": sum(c for c, _ in self.unknown.values()),
            "from": self.first_ts,
            "to": self.last_ts,
            "status": {str(k): v for k, v in sorted(self.status.items())},
            "backends": dict(sorted(self.backends.items(), key=lambda kv: -kv[1])),
            "latency_ms": {"p50": total["p50_ms"], "p95": total["p95_ms"]},
            "ttft_ms": {"p50": total["ttft_p50_ms"], "p95": total["ttft_p95_ms"]},
            "tokens": {"input": tg.input_tokens, "output": tg.output_tokens},
            "models": {m: g.to_dict() for m, g in sorted(self.models.items(), key=lambda kv: -kv[1].count)},
            "errors": dict(sorted(self.errors.items(), key=lambda kv: -kv[1])),
            "unknown": [{"method": m, "path": p, "count": c, "last_ts": ts}
                        for (m, p), (c, ts) in sorted(self.unknown.items(), key=lambda kv: -kv[1][0])],
        }
