"""The simulator's one token rule, used by /tokenize, the context check, usage and the load model.

* A piece of text costs ``ceil(len(text) / 4)`` tokens (characters, not bytes).
* A list of chat messages costs, per message, ``ceil(len(content) / 4) + 4`` (the 4 stand for the chat
  template's role markers), summed. Content given as OpenAI content parts counts the text of its text parts.
* A completion costs ``ceil(len(text) / 4)``; cutting an answer to ``max_tokens`` keeps ``max_tokens * 4``
  characters.
"""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def text_tokens(text: str) -> int:
    """Tokens of a plain text: ceil(len / 4)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def content_text(content: Any) -> str:
    """The text of a message's ``content``: a string, a list of content parts, or None."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return str(content)


def message_tokens(messages: list[Any]) -> int:
    """Tokens of a chat prompt: sum over messages of ceil(len(content) / 4) + 4."""
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        total += text_tokens(content_text(content)) + TOKENS_PER_MESSAGE
    return total


def fake_token_ids(count: int, seed_text: str = "") -> list[int]:
    """``count`` deterministic token ids (the simulator has no vocabulary; only the count is meaningful)."""
    base = sum(seed_text.encode("utf-8", "replace")[:64])
    return [(base + 7919 * i) % 151_643 for i in range(count)]
