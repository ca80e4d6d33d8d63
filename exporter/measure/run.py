"""`carbonmeter run -- CMD ARGS…`: run a command like `time` does, and say what it cost.

The command inherits stdin, stdout and stderr as they are (nothing is piped through us) and
our environment. Signals are handled synchronously: SIGINT, SIGTERM, SIGHUP, SIGQUIT and
SIGCHLD are blocked in every thread before any starts, and the main thread takes them with
sigwaitinfo(). One sent to us by a process (`kill`, a job scheduler) is forwarded to the
command; one the terminal sent to the foreground process group reached the command already
(si_code SI_KERNEL) and is not sent twice.

On Linux the command dies with us: it is started with PR_SET_PDEATHSIG, so when carbonmeter
is killed (SIGKILL, the OOM killer), the kernel sends the command SIGKILL instead of leaving
it running unmeasured.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from typing import Any

log = logging.getLogger(__name__)

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
SI_KERNEL = 0x80  # si_code of a signal the kernel sent itself, as a terminal's ^C is


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_started: dict[int, subprocess.Popen] = {}  # held until waited for: subprocess never reaps it


def _prctl() -> Any:
    """libc's prctl, on Linux; None elsewhere (loaded before the fork, never in the child)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def spawn(command: list[str], child_mask: set[int]) -> int:
    """Start `command` found on PATH; signal mask and SIGPIPE as if we were not there, and
    (on Linux) killed by the kernel when we die.

    Python ignores SIGPIPE and SIGXFSZ; like subprocess, the command gets them back at
    their default action. Every descriptor we did not mark close-on-exec is inherited, as a
    shell would pass them.
    """
    prctl = _prctl()
    if prctl is None:
        return os.posix_spawnp(command[0], command, os.environ, setsigmask=child_mask,
                               setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    parent = os.getpid()

    def in_child() -> None:  # between fork and exec: no lock taken, nothing imported
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # we died before the line above: die too
            os.kill(os.getpid(), signal.SIGKILL)
        signal.pthread_sigmask(signal.SIG_SETMASK, child_mask)

    proc = subprocess.Popen(command, preexec_fn=in_child, close_fds=False,
                            restore_signals=True)
    _started[proc.pid] = proc
    return proc.pid


def wait(pid: int) -> int:
    """Forward signals until the command ends; its wait status."""
    waited = {*FORWARDED, signal.SIGCHLD}
    while True:
        info = signal.sigwaitinfo(waited)
        if info.si_signo == signal.SIGCHLD:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                proc = _started.pop(pid, None)
                if proc is not None:  # reaped here: the Popen must not wait for it again
                    proc.returncode = os.waitstatus_to_exitcode(status)
                return status
            continue
        if info.si_code != SI_KERNEL:
            with contextlib.suppress(ProcessLookupError):  # it has just exited: SIGCHLD follows
                os.kill(pid, info.si_signo)


def exit_code(status: int) -> int:
    """The command's exit code, or 128+N when signal N ended it (as shells report it)."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _attribute_tree(meter: Any, cfg: Any, pid: int) -> Any:
    """Share the machine's energy with the command's process tree from now on: the
    attributor, or why the whole machine is reported (a string)."""
    # What goes wrong here is said once, in the summary's scope line, not logged meanwhile.
    logging.getLogger("carbonmeter.attribution").setLevel(logging.ERROR)
    try:
        from carbonmeter import attribution

        tree = attribution.process_tree(pid, cfg, meter.sampler.probes, reaper_pid=os.getpid())
        meter.attach(tree)
    except Exception as e:  # the command runs and is measured whatever happens here
        log.debug("process attribution unavailable", exc_info=True)
        return f"{type(e).__name__}: {e}"
    return tree


def _with_tree_share(usage: Any, last: Any, tree: Any) -> Any:
    """The usage with the process tree's share, when every reading of the tree succeeded."""
    import dataclasses

    from carbonmeter.attribution import process_tree_share

    why = tree if isinstance(tree, str) else tree.first_error
    share = None if why else process_tree_share(last)
    if share is None:
        return dataclasses.replace(usage, scope="machine", share=None,
                                   scope_reason=why or "the process tree was not read")
    return dataclasses.replace(usage, scope="process tree", share=share)


def run(cfg: Any, command: list[str], *, interval: float | None, output: str | None,
        as_json: bool, json_file: str | None = None) -> int:
    from carbonmeter.measure import summary
    from carbonmeter.measure.meter import Meter
    from carbonmeter.measure.publish import finished
    from carbonmeter.sinks.emissions_log import RowContext, logged_load, new_run_id, open_log
    from carbonmeter.usage import usage_between

    blocked = {*FORWARDED, signal.SIGCHLD}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        meter = Meter(cfg, interval=interval)  # its thread starts with the signals blocked
        first, load = meter.start(), logged_load(cfg.emissions_log)
        pending = signal.sigpending() & set(FORWARDED)
        if pending:  # interrupted while the probes were starting: do not start the command
            meter.stop()
            return 128 + min(pending)
        try:
            pid = spawn(command, before)
        except OSError as e:
            meter.stop()
            missing = isinstance(e, FileNotFoundError)
            why = "command not found" if missing else (e.strerror or str(e))
            print(f"carbonmeter: {command[0]}: {why}", file=sys.stderr)
            return 127 if missing else 126
        tree = _attribute_tree(meter, cfg, pid)
        code = exit_code(wait(pid))
        last = meter.stop()
        usage, load = usage_between(first, last), (load, logged_load(cfg.emissions_log))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
    usage = _with_tree_share(usage, last, tree)

    doc = json.dumps(summary.as_json(usage, command=command, exit_code=code)) + "\n"
    text = doc if as_json else summary.as_text(usage, command=command, exit_code=code)
    for path, content in ((output, text), (json_file, doc if json_file else "")):
        if not path:
            continue
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(content)
        except OSError as e:
            print(f"carbonmeter: cannot write the summary to {path}: {e.strerror or e}",
                  file=sys.stderr)
    if not output:
        sys.stderr.write(text)
        sys.stderr.flush()
    ctx = RowContext(cfg.emissions_log.project_name, new_run_id())
    finished(usage, ctx, emissions_log=open_log(cfg.emissions_log), cfg=cfg, load=load)
    return code
