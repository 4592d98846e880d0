"""``check``: is the model server reachable, serving our model, and answering? One short request says.

Use :func:`run_check` before a long run (the CLI's ``check`` command prints :meth:`CheckReport.lines`).
It never raises for server problems: the report carries ``ok=False`` and the reason, with the fix. An
answer that is empty or cut off at max_tokens fails the check too: translations would fail the same way.
The server URL is shown without credentials and the API key never.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import anyio

from .config import Config
from .endpoints import endpoint_settings
from .errors import PipelineError
from .llm import ModelClient

CHECK_PROMPT = "Reply with the word ready."
#: The check asks for a one-word answer; a few tokens of room covers chat templates that add a preamble.
CHECK_MAX_TOKENS = 32
#: A check should answer within a minute, not wait out a long outage budget.
CHECK_RETRY_ATTEMPTS = 2
CHECK_DEADLINE = 30.0
CHECK_OUTAGE_BUDGET = 20.0
CHECK_REQUEST_TIMEOUT = 120.0
MODEL_FIX = (
    "check that the served model is an instruction-tuned (chat) model and that vLLM uses its chat template "
    "(--chat-template)"
)


@dataclass(frozen=True)
class CheckReport:
    """The outcome of one server check."""

    ok: bool
    base_url: str
    model: str
    served: tuple[str, ...]
    max_model_len: int | None
    latency_seconds: float | None
    prompt_tokens: int
    completion_tokens: int
    answer: str
    error: str | None

    def lines(self) -> list[str]:
        """The human-readable report, one line per fact, the verdict first."""
        out = [f"model server check: {'OK' if self.ok else 'FAILED'}"]
        out.append(f"  server:         {self.base_url}")
        out.append(f"  model:          {self.model}")
        if self.served:
            out.append(f"  served models:  {', '.join(self.served)}")
        if self.max_model_len is not None:
            out.append(f"  context length: {self.max_model_len} tokens (max_model_len)")
        elif self.served:
            out.append("  context length: not reported by the server")
        if self.latency_seconds is not None:
            out.append(f"  latency:        {self.latency_seconds:.2f} s for one short request")
            out.append(f"  tokens:         {self.prompt_tokens} prompt + {self.completion_tokens} completion")
            answer = self.answer.strip().replace("\n", " ")
            out.append(f"  answer:         {answer[:80]!r}{' ...' if len(answer) > 80 else ''}")
        if self.error is not None:
            out.append(f"  error:          {self.error}")
        return out


async def run_check(config: Config) -> CheckReport:
    """Connect, list the served models, send one short chat request, and report; never raises for the server.

    Uses the run's settings with a small max_tokens and short retries, so a dead server fails in seconds.
    """
    model = dataclasses.replace(config.model, max_tokens=min(config.model.max_tokens, CHECK_MAX_TOKENS))
    settings = dataclasses.replace(
        config.client,
        workers=1,
        retry_attempts=min(config.client.retry_attempts, CHECK_RETRY_ATTEMPTS),
        retry_deadline=min(config.client.retry_deadline, CHECK_DEADLINE),
        outage_budget=min(config.client.outage_budget, CHECK_OUTAGE_BUDGET),
        request_timeout=min(config.client.request_timeout, CHECK_REQUEST_TIMEOUT),
    )
    report = CheckReport(
        ok=False, base_url=model.public_url.rstrip("/"), model=model.model, served=(), max_model_len=None,
        latency_seconds=None, prompt_tokens=0, completion_tokens=0, answer="", error=None,
    )
    try:
        async with ModelClient.open(model, settings) as client:
            info = await client.preflight()
            report = dataclasses.replace(report, served=info.served, max_model_len=info.max_model_len)
            started = time.monotonic()
            completion = await client.complete([{"role": "user", "content": CHECK_PROMPT}], purpose="check")
            report = dataclasses.replace(
                report,
                ok=True,
                latency_seconds=time.monotonic() - started,
                prompt_tokens=completion.usage.prompt_tokens,
                completion_tokens=completion.usage.completion_tokens,
                answer=completion.text,
            )
    except PipelineError as exc:
        return dataclasses.replace(report, ok=False, error=str(exc))
    if completion.truncated:
        return dataclasses.replace(report, ok=False, error=(
            f"the model's answer to {CHECK_PROMPT!r} was cut off at max_tokens {model.max_tokens} "
            f"(finish_reason length) instead of a one-word reply: {MODEL_FIX}"
        ))
    if not completion.text.strip():
        return dataclasses.replace(report, ok=False, error=(
            f"the model's answer to {CHECK_PROMPT!r} was empty (finish_reason {completion.finish_reason}): "
            f"the server answers but the model generates no text: {MODEL_FIX}"
        ))
    return report


async def run_checks(config: Config) -> list[CheckReport]:
    """One report per model server, all checked at once: every ``[VLLM]`` endpoint, or the one server."""
    if not config.model.endpoints:
        return [await run_check(config)]
    configs = [dataclasses.replace(config, model=endpoint_settings(config.model, e)) for e in config.model.endpoints]
    reports: list[CheckReport | None] = [None] * len(configs)

    async def one(index: int) -> None:
        reports[index] = await run_check(configs[index])

    async with anyio.create_task_group() as tg:
        for index in range(len(configs)):
            tg.start_soon(one, index)
    return [r for r in reports if r is not None]
