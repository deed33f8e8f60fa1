"""Batch evaluation: many model inputs in, one JSONL line per input out, a small manifest in XCom.

This package imports nothing at import time: each module pulls in what it needs (``httpx``,
``fsspec``) when used.
"""

from __future__ import annotations

#: The engines that run a batch (``engine="auto"`` picks one of them).
ENGINES = ("queue", "direct")
