"""Prompt tokens per verified task on a repair-heavy corpus, and what an automatic prefix cache saves of them.

    python -m bench.prefix                # 40 tasks, max attempts 4, the simulator in this process
    python -m bench.prefix --tasks 20 --json bench/results/prefix.json

Steps: write a synthetic corpus of distinct ``@sim`` tasks (in blocks of 10: 2 pass at once, 4 repaired once
(either stage), 2 repaired twice, 2 failing every attempt); run the real CLI over it against the simulator
(bodies recorded); then replay the chat requests in arrival order through a model of vLLM's automatic prefix
cache: a prompt is rendered as a chat template would (role markers around each message), cut into blocks of
:data:`BLOCK_TOKENS` tokens (the simulator's rule: 4 characters a token), and a block hits when the same block
chain (everything before it included) was part of an earlier prompt. The cache never evicts (vLLM keeps blocks
until memory runs short). Two variants: the cache holds prompts only, or also each answer as the next request of
its conversation quotes it (vLLM's v1 engine caches the blocks of generated tokens too, so a repair request that
quotes the previous answer word for word finds it cached).

Figures (per verified task): prompt tokens as the server counts them, prompt tokens that miss the cache (the
prefill the GPU really does), and the hit rate (hit tokens / prompt tokens, like vLLM's
``vllm:prefix_cache_hits`` / ``vllm:prefix_cache_queries``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.simulator import LoadModel, SimConfig, Simulator

from .common import CLI, MODEL, TaskPlan, clean_env, markdown_table, write_config, write_corpus

BLOCK_TOKENS = 16  # vLLM's default KV block size
CHARS_PER_TOKEN = 4  # the simulator's token rule (pipeline/simulator/tokens.py)
BLOCK = 10
MAX_ATTEMPTS = 4
#: One block of 10 tasks: (unidiomatic outcomes, idiomatic outcomes).
MIX: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("pass",), ("pass",)),
    (("pass",), ("pass",)),
    (("compile_error", "pass"), ("pass",)),
    (("test_fail", "pass"), ("pass",)),
    (("pass",), ("compile_error", "pass")),
    (("pass",), ("test_fail", "pass")),
    (("compile_error", "test_fail", "pass"), ("pass",)),
    (("pass",), ("test_fail", "compile_error", "pass")),
    (("compile_error",), ("pass",)),
    (("pass",), ("test_fail",)),
)


def plans(count: int, tokens: int) -> list[TaskPlan]:
    """``count`` distinct tasks following :data:`MIX`, in order."""
    out = []
    for index in range(count):
        uni, idio = MIX[index % BLOCK]
        name = f"task{index:05d}"
        out.append(TaskPlan(name, name, uni, idio, stdout=f"result of {name}: {index * 7919 % 10007}", tokens=tokens))
    return out


def render(messages: Sequence[Mapping[str, Any]]) -> str:
    """A chat prompt as one text, the way a chat template lays it out (role markers around each message)."""
    return "".join(f"<|{m.get('role')}|>\n{m.get('content') or ''}<|end|>\n" for m in messages)


@dataclass
class PrefixCache:
    """Block-chain hashes of every prompt seen (vLLM's automatic prefix caching, without eviction)."""

    block_chars: int = BLOCK_TOKENS * CHARS_PER_TOKEN
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # of them found

    def __post_init__(self) -> None:
        self._seen: set[bytes] = set()

    def insert(self, text: str) -> None:
        """Add ``text``'s full blocks to the cache without counting a lookup (generated tokens)."""
        self._walk(text)

    def _walk(self, text: str) -> int:
        digest = hashlib.sha256()
        hit_chars = 0
        missed = False
        full = len(text) - len(text) % self.block_chars
        for start in range(0, full, self.block_chars):
            digest.update(text[start:start + self.block_chars].encode())
            key = digest.copy().digest()
            if not missed and key in self._seen:
                hit_chars += self.block_chars
            else:
                missed = True
                self._seen.add(key)
        return hit_chars

    def lookup(self, text: str) -> int:
        """Add ``text``'s full blocks to the cache; return how many of its tokens were cached before."""
        hit_chars = self._walk(text)
        tokens = -(-len(text) // CHARS_PER_TOKEN)
        hit = min(hit_chars // CHARS_PER_TOKEN, tokens)
        self.queries += tokens
        self.hits += hit
        return hit


def replay(bodies: Iterable[Mapping[str, Any]], *, answers: bool = False) -> PrefixCache:
    """Every chat request body, in arrival order, through one :class:`PrefixCache`. With ``answers``, a request
    whose messages but the last two were an earlier prompt word for word first adds that prompt with its answer
    (the assistant message it quotes) to the cache, as the server did when it generated the answer."""
    cache = PrefixCache()
    prompts: set[str] = set()
    for body in bodies:
        messages = list(body.get("messages") or [])
        if answers and len(messages) >= 4 and messages[-2].get("role") == "assistant" \
                and _digest(render(messages[:-2])) in prompts:
            cache.insert(render(messages[:-1]))
        text = render(messages)
        prompts.add(_digest(text))
        cache.lookup(text)
    return cache


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Figures:
    tasks: int
    verified: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cached_tokens_with_answers: int

    @property
    def per_verified(self) -> dict[str, float]:
        n = max(self.verified, 1)
        return {"requests": self.requests / n, "prompt_tokens": self.prompt_tokens / n,
                "uncached_prompt_tokens": (self.prompt_tokens - self.cached_tokens) / n,
                "completion_tokens": self.completion_tokens / n,
                "uncached_prompt_tokens_with_answers": (self.prompt_tokens - self.cached_tokens_with_answers) / n,
                "hit_rate": self.cached_tokens / max(self.prompt_tokens, 1),
                "hit_rate_with_answers": self.cached_tokens_with_answers / max(self.prompt_tokens, 1)}


def measure(work: Path, count: int, tokens: int, workers: int, cache_dir: Path) -> Figures:
    corpus = work / "corpus"
    write_corpus(corpus, plans(count, tokens))
    config = write_config(work / "sactor.toml", compile_cache=True)
    sim = Simulator(SimConfig(model=MODEL, max_model_len=32768, load=LoadModel(capacity=64)))
    out = work / "out"
    with sim.running() as url:
        argv = [sys.executable, str(CLI), "--c-files", str(corpus), "--json-files", str(corpus), "--output", str(out),
                "--base-url", url, "--model", MODEL, "--workers", str(workers), "--cache-dir", str(cache_dir),
                "--config", str(config), "--max-attempts", str(MAX_ATTEMPTS), "--max-tokens", "4096",
                "--progress-interval", "60"]
        done = subprocess.run(argv, cwd=work, env=clean_env(), capture_output=True, text=True, timeout=3600)
        if done.returncode not in (0, 1):
            raise SystemExit(f"the run exited {done.returncode}:\n{done.stderr[-3000:]}")
    requests = [r for r in sim.chat_requests if r.status == 200]
    tasks = json.loads((out / "batch_summary.json").read_text())["tasks"]
    # The server's counts; the cache model's token rule is the simulator's, so the two agree up to role markers.
    prompt = sum(r.prompt_tokens or 0 for r in requests)
    cached = [replay((r.body for r in requests), answers=answers) for answers in (False, True)]
    scaled = [round(cache.hits * prompt / max(cache.queries, 1)) for cache in cached]
    return Figures(len(tasks), sum(t["status"] == "verified" for t in tasks), len(requests), prompt,
                   sum(r.completion_tokens or 0 for r in requests), *scaled)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.prefix", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=40, help="corpus size (a multiple of 10 keeps the mix exact)")
    p.add_argument("--tokens", type=int, default=400, help="answer length in tokens")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--cache-dir", type=Path, default=Path(__file__).parent / "results" / "cache")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-prefix-") as tmp:
        figures = measure(Path(tmp), args.tasks, args.tokens, args.workers, args.cache_dir.resolve())
    per = figures.per_verified
    print(markdown_table(
        ["tasks", "verified", "requests/verified", "prompt tokens/verified", "uncached (prompts cached)",
         "hit rate", "uncached (answers cached too)", "hit rate", "completion tokens/verified"],
        [[figures.tasks, figures.verified, per["requests"], per["prompt_tokens"], per["uncached_prompt_tokens"],
          per["hit_rate"], per["uncached_prompt_tokens_with_answers"], per["hit_rate_with_answers"],
          per["completion_tokens"]]]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**asdict(figures), "per_verified": per}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
