"""The engine's own metrics, one table for every front end: Triton's custom metrics and the Prometheus
text a Dynamo worker appends to its status server's /metrics."""

from __future__ import annotations

from nld.engine import Engine

METRICS = {  # name: (kind, description)
    "nld_requests_total": ("COUNTER", "requests started, by decoding mode"),
    "nld_tokens_total": ("COUNTER", "tokens generated"),
    "nld_forwards_total": ("COUNTER", "batched forward passes run by the engine"),
    "nld_accepted_tokens_total": ("COUNTER", "tokens accepted by self-speculation verify steps"),
    "nld_verify_steps_total": ("COUNTER", "self-speculation verify steps of finished requests"),
    "nld_request_forwards_total": ("COUNTER", "decode forwards of finished requests, each counted per request"),
    "nld_kv_blocks_in_use": ("GAUGE", "KV pool blocks held by running requests"),
    "nld_kv_blocks_free": ("GAUGE", "KV pool blocks free"),
}
MODE_LABEL = "mode"


def engine_samples(engine: Engine) -> dict[tuple[str, str], float]:
    """{(metric name, mode label or ""): value} of the engine now."""
    counters = dict(engine.metrics)
    values: dict[tuple[str, str], float] = {
        ("nld_tokens_total", ""): counters.get("tokens", 0),
        ("nld_forwards_total", ""): counters.get("forwards", 0),
        ("nld_accepted_tokens_total", ""): counters.get("accepted_tokens", 0),
        ("nld_verify_steps_total", ""): counters.get("verify_steps", 0),
        ("nld_request_forwards_total", ""): counters.get("request_forwards", 0),
        ("nld_kv_blocks_in_use", ""): engine.pool.used_blocks,
        ("nld_kv_blocks_free", ""): engine.pool.free_blocks,
    }
    for key, count in counters.items():
        if key.startswith("requests_"):
            values[("nld_requests_total", key.removeprefix("requests_"))] = count
    return values


def prometheus_text(samples: dict[tuple[str, str], float], labels: dict[str, str] | None = None) -> str:
    """Prometheus text exposition of `engine_samples`, every sample also carrying `labels`."""
    lines = []
    for name, (kind, description) in METRICS.items():
        lines += [f"# HELP {name} {description}", f"# TYPE {name} {kind.lower()}"]
        for (sample, mode), value in sorted(samples.items()):
            if sample != name:
                continue
            pairs = {**(labels or {}), **({MODE_LABEL: mode} if mode else {})}
            rendered = ",".join(f'{key}="{text}"' for key, text in pairs.items())
            lines.append(f"{name}{{{rendered}}} {value:g}" if rendered else f"{name} {value:g}")
    return "\n".join(lines) + "\n"
