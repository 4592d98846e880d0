"""Every error the pipeline raises on purpose, in three families.

    PipelineError
    ├── TransientError          retry it: the same request may succeed later
    │   ├── ServerBusy          429 / 503 / 5xx / 408 / 409 (carries Retry-After when the server sent one)
    │   └── ServerUnreachable   connection refused or dropped, timeout
    ├── TaskFailure             this task cannot succeed as asked; record the reason, the run goes on
    │   ├── TaskInputError      the C file or the test task is unusable (not UTF-8, bad JSON, missing samples)
    │   ├── ContextOverflow     the prompt does not fit the model's context
    │   └── RequestFailed       the server refused this request for good, or transient retries ran out
    └── FatalError              the run cannot go on; finished work is kept and a rerun resumes
        ├── ConfigError         a setting is wrong (names the file, the key and the fix)
        ├── ModelUnavailable    preflight failed, model not served, or the outage budget is spent
        ├── DiskFull            results cannot be written
        ├── RunLocked           another run holds the output directory
        └── Interrupted         SIGINT/SIGTERM arrived before the run started (exit 130)

Lower-layer errors (openai, OSError) are converted once, at the boundary that sees them, with
``raise ... from exc``; code above that boundary only ever sees these classes.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class TransientError(PipelineError):
    """A failure that may go away if the same thing is tried again later."""


class ServerBusy(TransientError):
    """The server answered but asked us to come back (429, 5xx, 408, 409)."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class ServerUnreachable(TransientError):
    """No answer at all: connection refused, dropped, or timed out."""


class TaskFailure(PipelineError):
    """This task cannot succeed as asked; it is recorded as failed with this message."""

    #: Model requests sent before it failed (retries included); the model client sets it.
    requests: int = 0


class TaskInputError(TaskFailure):
    """The task's own files are unusable (encoding, JSON shape, missing samples file)."""


class ContextOverflow(TaskFailure):
    """The prompt does not fit the model's context window."""


class RequestFailed(TaskFailure):
    """The server refused this request for good, or its retries ran out while the server was otherwise up."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


#: The command line's exit statuses, the one place they are defined (the error classes below carry theirs).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SERVER, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class FatalError(PipelineError):
    """The run cannot continue. Finished work stays on disk and a rerun resumes from it."""

    exit_code = EXIT_FAILED


class ConfigError(FatalError):
    """A configuration value is wrong. The message names the file, the key and the fix."""

    exit_code = EXIT_USAGE


class ModelUnavailable(FatalError):
    """The model server cannot be used: preflight failed, model not served, or outage budget spent."""

    exit_code = EXIT_SERVER


class DiskFull(FatalError):
    """Results can no longer be written."""

    exit_code = EXIT_FAILED


class RunLocked(FatalError):
    """Another run holds the output directory."""

    exit_code = EXIT_USAGE


class Interrupted(FatalError):
    """SIGINT or SIGTERM arrived during start-up; what was opened has been closed again."""

    exit_code = EXIT_INTERRUPTED
