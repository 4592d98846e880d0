"""The words we send to the model: the unidiomatic request, the idiomatic request, and repair turns.

Laid out for the server's automatic prefix caching (vLLM ``--enable-prefix-caching``): a prompt whose first
tokens match an earlier prompt's reuses their computed state instead of computing it again. So every request
starts with what is the same for every task, byte for byte: the system message, then the stage's instructions
and the reply format; the task's own content (its name, its C program, the program to rewrite) comes last, and
nothing volatile (names, paths, times, attempt numbers, counts) comes before it. The first requests of all tasks
of a stage share everything up to the task's content.

A stage is one conversation. Its first user message never changes; each repair appends the previous answer and
the feedback, and leaves every earlier message exactly as it was sent (:func:`conversation`), so a repair request
extends the request before it and only the newest turn is new to the server. The earlier turns cost no prefill
but they do take context: past :data:`HISTORY_CHARS` of them the oldest become one-line stubs (once; they stay
stubs). An answer cut off at the length limit is never sent back whole (it filled the room the context left, so
the repair request would not fit): :func:`cut_off_turn` keeps only its complete program, if any.

The request format asks for the code between :data:`~pipeline.extract.BEGIN_MARK` and
:data:`~pipeline.extract.END_MARK`; :mod:`pipeline.extract` also accepts a plain fenced block.
The idiomatic request quotes the verified unidiomatic Rust in a ```rust fence; the unidiomatic request
quotes only C. (The simulator tells the stages apart by that.)
"""

from __future__ import annotations

from dataclasses import dataclass

from .extract import BEGIN_MARK, END_MARK
from .records import StageName

Message = dict[str, str]

_REPLY_FORMAT = f"""Reply with the complete program, and nothing else, between these two lines:
{BEGIN_MARK}
(the whole Rust program, with fn main)
{END_MARK}"""

# The instructions never name the task: its name and programs come last, after everything tasks share.
UNIDIOMATIC = """Translate the C program given at the end of this message into one complete Rust program (edition \
2021, a single file with `fn main`) that behaves identically: the same bytes on standard output and standard \
error, the same exit codes, the same handling of command-line arguments and standard input.

This is a close, unidiomatic translation: keep the C program's structure and names. `unsafe`, raw pointers and the \
`libc` crate (available as `libc::...`; no other crates exist) are allowed. Do not read files or environment \
variables at build time (no include_str!, include_bytes!, include!, env!, option_env!).

{reply_format}

The C program `{name}`:
```c
{c_source}
```
"""

IDIOMATIC = """Rewrite the Rust translation of a C program, given at the end of this message, as safe, idiomatic \
Rust (edition 2021, one file with `fn main`). It must behave exactly like the translation: the same bytes on \
standard output and standard error, the same exit codes, the same handling of command-line arguments and standard \
input.

Rules: no `unsafe` anywhere, no `libc`, no raw pointers, no `static mut`. Use `String`, `Vec`, slices, `Option`, \
`Result`, iterators and the standard library (std::env::args, std::io, std::process::exit). Do not read files or \
environment variables at build time (no include_str!, include_bytes!, include!, env!, option_env!).

{reply_format}

The original C program `{name}`, for intent:
```c
{c_source}
```

The verified translation to rewrite:
```rust
{rust_source}
```
"""

REPAIR = """Attempt {attempt} failed: {summary}

{feedback}

Fix the program. {reply_format_short}"""

_REPLY_SHORT = f"Reply with the whole corrected program between {BEGIN_MARK} and {END_MARK}."


#: The revision of the wording above, in the settings fingerprint instead of the texts themselves: a change of
#: layout alone (what goes where, for the prefix cache) keeps finished tasks; a change of meaning bumps it and
#: finished tasks are redone. tests/test_prompts.py pins the texts to it, so no edit goes by unnoticed.
PROMPTS_REVISION = "2"

#: The first request of each stage declared in :data:`~pipeline.records.STAGE_SPECS`. A stage after the first
#: quotes the previous stage's verified program (``{rust_source}``).
FIRST_REQUESTS: dict[StageName, str] = {"unidiomatic": UNIDIOMATIC, "idiomatic": IDIOMATIC}


def first_prompt(stage: StageName, *, name: str, c_source: str, rust_source: str | None = None) -> str:
    """The first user message of ``stage``. Raises ValueError when the stage quotes a previous program and
    ``rust_source`` is missing."""
    template = FIRST_REQUESTS[stage]
    if "{rust_source}" in template and rust_source is None:
        raise ValueError(f"the {stage} stage starts from the previous stage's verified program: give rust_source")
    return template.format(name=name, c_source=c_source.rstrip(), rust_source=(rust_source or "").rstrip(),
                           reply_format=_REPLY_FORMAT)


#: The marker line of a function-level request: the simulator (and anyone reading a log) finds the group by it.
FUNCTION_MARKER = "Function-level item: "

#: The function-level unidiomatic request (:mod:`pipeline.function_stage`). Laid out for vLLM's prefix cache:
#: the instructions come first and are the same bytes for every item of every task; the marker line, the
#: item's names and its context (:meth:`~pipeline.function_context.FunctionContext.render`) come last.
FUNCTION_REQUEST = """A C program is being translated into Rust (edition 2021) one function at a time: each \
translation is linked into the C program in place of the C definition and must behave identically.

Write each function as `#[no_mangle] pub unsafe extern "C" fn NAME(...)` with the C parameter and return types \
(`main` alone as a plain `fn main()`, reading arguments with std::env::args). This is a close translation: keep \
the C logic; `unsafe`, raw pointers and `libc::...` are allowed, no other crates. The types, globals and \
functions shown with the item are already defined with exactly these Rust declarations: use them, do not define \
them again, and define nothing else but small private helpers.

Reply with the Rust code only, between these two lines:
{begin}
(the Rust function or functions)
{end}

{marker}{label}
Translate the C {what} {names} of the program `{program}`.

{context}
"""

#: The end of a function-level repair request: what to send back.
FUNCTION_REPLY = f"Reply with the corrected Rust function(s) only, between {BEGIN_MARK} and {END_MARK}."
#: The repair turn of a function-level answer without code (verdicts of the FFI check carry their own text).
FUNCTION_NO_CODE = "{problem}. Reply with the Rust code between the marks."


def function_request(*, label: str, names: str, many: bool, program: str, context: str) -> str:
    """The first request for one function group (``label``: its names joined with '+'; ``names``: the same,
    quoted for the text)."""
    return FUNCTION_REQUEST.format(
        begin=BEGIN_MARK, end=END_MARK, marker=FUNCTION_MARKER, label=label, names=names, program=program,
        what="functions (they call each other, so they are translated together)" if many else "function",
        context=context,
    )


@dataclass(frozen=True)
class Turn:
    """One failed attempt: the model's answer and what we told it about the failure."""

    answer: str
    summary: str
    feedback: str


CUT_OFF_STUB = "(my answer was cut off at the length limit after {tokens} tokens; it is not repeated here)"
CUT_OFF_ADVICE = (
    "Your previous answer was cut off at the length limit. Reply with the whole program only, as compactly as "
    "you can: no explanation before or after it, no comments."
)


def cut_off_turn(completion_tokens: int, code: str | None, summary: str, feedback: str) -> Turn:
    """The turn for an answer cut off at the length limit: its complete program if one was found, else a stub."""
    shown = (f"{BEGIN_MARK}\n{code.rstrip()}\n{END_MARK}" if code is not None
             else CUT_OFF_STUB.format(tokens=completion_tokens))
    advice = feedback if CUT_OFF_ADVICE in feedback else f"{feedback.rstrip()}\n\n{CUT_OFF_ADVICE}".lstrip()
    return Turn(shown, summary, advice)


#: Earlier failed turns are resent word for word while their answers and feedback together stay within this many
#: characters (about 3,000 tokens): the server's prefix cache holds them from the request before, so they cost
#: context but no prefill. Past it the oldest become stubs.
HISTORY_CHARS = 12_000


def _stubbed(turns: list[Turn], history_chars: int) -> int:
    """How many of the oldest earlier turns (all but the last) are sent as stubs: the fewest that bring the rest
    within ``history_chars``. It never shrinks as turns are added, so a stub, once sent, stays a stub."""
    sizes = [len(turn.answer) + len(turn.feedback) for turn in turns[:-1]]
    total, count = sum(sizes), 0
    while count < len(sizes) and total > history_chars:
        total -= sizes[count]
        count += 1
    return count


def conversation(
    system: str, first: str, turns: list[Turn], *, reply: str = _REPLY_SHORT, history_chars: int = HISTORY_CHARS
) -> list[Message]:
    """The messages for the next attempt: system, first request, then the failed turns, each repair request
    ending with ``reply``, what to send back: the whole program by default, :data:`FUNCTION_REPLY` for a function.

    Append-only: a failed turn is sent as it was when it was the newest (its answer, then the repair request),
    so this request extends the one before it and the server's prefix cache holds all but the newest turn. When
    the earlier turns pass ``history_chars``, the oldest become stubs (the number of earlier attempts and why
    they failed stay visible), so a long repair loop does not grow the prompt without bound.
    """
    messages: list[Message] = [{"role": "system", "content": system}, {"role": "user", "content": first}]
    stubs = _stubbed(turns, history_chars)
    for number, turn in enumerate(turns, start=1):
        stub = number <= stubs
        messages.append({
            "role": "assistant",
            "content": f"(attempt {number}: program omitted)" if stub else turn.answer,
        })
        messages.append({
            "role": "user",
            "content": f"Attempt {number} failed: {turn.summary}" if stub else REPAIR.format(
                attempt=number, summary=turn.summary, feedback=turn.feedback.rstrip(),
                reply_format_short=reply,
            ),
        })
    return messages
