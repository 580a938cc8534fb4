"""One record per build stage, as the manifest lists them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StageRecord:
    """A stage built (with its artifacts) or not built (with the reason and, where one exists, the command
    that finishes it elsewhere)."""

    name: str
    built: bool
    artifacts: list[str] = field(default_factory=list)
    reason: str | None = None
    command: str | None = None
    seconds: float = 0.0
    details: dict | None = None
