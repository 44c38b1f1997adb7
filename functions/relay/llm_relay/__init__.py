"""llm-relay: a serverless edge relay for streaming LLM responses."""

from __future__ import annotations

__version__ = "0.3.0.dev0"
