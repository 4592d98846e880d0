"""Batch C-to-Rust translation against a self-hosted, OpenAI-compatible model server (vLLM)."""

__version__ = "0.1.0"
