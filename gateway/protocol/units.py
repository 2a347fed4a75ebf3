"""Sizes as people read them (terminal output of the model commands)."""
from __future__ import annotations


def human_size(n: float) -> str:
    """Bytes in binary units: 104 B, 2.9 MB, 4.2 GB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
