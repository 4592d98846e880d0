"""The first process of a sandboxed run: ``python -I -S sandbox_init.py CONFIG_JSON ARGV...``.

Started by :mod:`pipeline.sandbox` as pid 1 of the run's namespaces (or, without namespaces, as a child
subreaper). It is root inside the namespaces when we are root and never runs untrusted code itself:

1. mounts a private, size-capped tmpfs on each of ``tmp`` and an empty one, only root may write, on each of
   ``hide`` (the run's corpus, results and cache), keeping the scratch root ``keep`` visible; when a ``hide``
   cannot be covered, the program is not run (exit status 126, no report);
2. forks; the child resets signal dispositions, sets the rlimits, drops to ``uid`` with no supplementary
   groups and ``no_new_privs``, and execs ``ARGV``;
3. reaps every process until the program ends and reports its exit status, signal and CPU time as JSON on
   the inherited pipe ``fd``;
4. without a PID namespace, kills whatever the program left behind before exiting (with one, the kernel does);
   exits 0 when nothing is left, 3 when leftovers could not be reaped in time.

``sandbox_helper.c`` does the same, compiled (see :mod:`pipeline.sandbox_helper`); this script is its fallback.

Run as a script with ``-I -S`` it must import nothing but the standard library, and nothing of the caller's
environment reaches it except the config. Keep it small: its start-up is paid on every test run.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import time
import warnings  # noqa: F401  (os.execvp imports it lazily, which fails after the uid drop)
from typing import Any

# <linux/prctl.h> and <sys/mount.h>
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
MS_NOSUID = 2
MS_NODEV = 4
MS_BIND = 4096
MS_REC = 16384
MNT_DETACH = 2
#: Without a PID namespace: how long leftovers of the program are hunted after it exits.
ORPHAN_SWEEP_SECONDS = 2.0
EXIT_NOT_FOUND = 127
EXIT_CANNOT_RUN = 126

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                   data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def private_tmp(dirs: list[str], keep: str, size: int, cwd: str, hide: list[str]) -> bool | str:
    """Mount the private tmpfs and cover ``hide``; True, or why not (everything mounted so far is undone)."""
    done: list[str] = []
    try:
        keep_fd = os.open(keep, os.O_PATH | os.O_DIRECTORY)
        for d in dirs:
            if os.path.isdir(d) and not os.path.islink(d):
                _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=1777")
                done.append(d)
        for d in hide:
            if os.path.isdir(d) and not os.path.islink(d):  # not there (yet), or under one covered already
                _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
                done.append(d)
        if not os.path.isdir(keep):  # the scratch root was under one of them: bind it back
            os.makedirs(keep, 0o711)
            _mount(f"/proc/self/fd/{keep_fd}", keep, None, MS_BIND | MS_REC, None)
            done.append(keep)
        os.close(keep_fd)
        os.chdir(cwd)
        return True
    except OSError as exc:
        for d in reversed(done):
            _libc.umount2(d.encode(), MNT_DETACH)
        return str(exc)


def exec_program(cfg: dict[str, Any], argv: list[str]) -> None:
    """In the forked child: limits, uid drop, exec. Never returns."""
    try:
        os.close(cfg["fd"])
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        for name, soft, hard in cfg["rl"]:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        uid = cfg["uid"]
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.write(2, (f"sandbox: cannot run {argv[0]}: {exc.strerror or exc}\n").encode())
        os._exit(EXIT_NOT_FOUND if exc.errno == 2 else EXIT_CANNOT_RUN)
    except BaseException as exc:
        os.write(2, (f"sandbox: cannot run {argv[0]}: {exc!r}\n").encode())
        os._exit(EXIT_CANNOT_RUN)


def wait_for(pid: int, report: dict[str, Any]) -> None:
    """Reap every child until ``pid`` ends; put its status and CPU time in ``report``."""
    while True:
        try:
            wpid, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            return
        if wpid == pid:
            break
    report["rc"] = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    report["sig"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    report["cpu"] = usage.ru_utime + usage.ru_stime


def kill_orphans() -> bool:
    """Without a PID namespace: kill and reap the program's leftovers (we are their subreaper). True when
    none is left."""
    end = time.monotonic() + ORPHAN_SWEEP_SECONDS
    while time.monotonic() < end:
        kids: set[int] = set()
        try:
            for task in os.listdir("/proc/self/task"):
                with open(f"/proc/self/task/{task}/children") as fh:
                    kids.update(int(x) for x in fh.read().split())
        except OSError:
            pass
        for kid in kids:
            try:
                os.kill(kid, signal.SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return True
        time.sleep(0.005)
    return False


def main(cfg: dict[str, Any], argv: list[str]) -> None:
    report: dict[str, Any] = {"rl": True, "tmp": None}
    hide = cfg.get("hide") or []
    if cfg["tmp"] or hide:
        report["tmp"] = private_tmp(cfg["tmp"], cfg["keep"], cfg["tmp_size"], cfg["cwd"], hide)
    if hide and report["tmp"] is not True:  # the program would see what it must not: do not run it
        os.write(2, f"sandbox: cannot hide the run's folders from {argv[0]}: {report['tmp']}\n".encode())
        os._exit(EXIT_CANNOT_RUN)
    if not cfg["pid1"]:
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    pid = os.fork()
    if pid == 0:
        exec_program(cfg, argv)
    wait_for(pid, report)
    os.write(cfg["fd"], json.dumps(report).encode())
    os.close(cfg["fd"])
    clean = cfg["pid1"] or kill_orphans()
    os._exit(0 if clean else 3)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), sys.argv[2:])
