"""`carbonmeter run -- CMD ARGS…`: run a command like `time` does, and say what it cost.

The command inherits stdin, stdout and stderr as they are (nothing is piped through us) and
our environment. Signals are handled synchronously: SIGINT, SIGTERM, SIGHUP, SIGQUIT and
SIGCHLD are blocked in every thread before any starts, and the main thread takes them with
sigwaitinfo(). One sent to us by a process (`kill`, a job scheduler) is forwarded to the
command; one the terminal sent to the foreground process group reached the command already
(si_code SI_KERNEL) and is not sent twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from typing import Any

log = logging.getLogger(__name__)

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
SI_KERNEL = 0x80  # si_code of a signal the kernel sent itself, as a terminal's ^C is


def spawn(command: list[str], child_mask: set[int]) -> int:
    """Start `command` found on PATH; signal mask and SIGPIPE as if we were not there.

    Python ignores SIGPIPE and SIGXFSZ; like subprocess, the command gets them back at
    their default action.
    """
    return os.posix_spawnp(command[0], command, os.environ, setsigmask=child_mask,
                           setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))


def wait(pid: int) -> int:
    """Forward signals until the command ends; its wait status."""
    waited = {*FORWARDED, signal.SIGCHLD}
    while True:
        info = signal.sigwaitinfo(waited)
        if info.si_signo == signal.SIGCHLD:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == pid:
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
        as_json: bool) -> int:
    from carbonmeter.measure import summary
    from carbonmeter.measure.meter import Meter
    from carbonmeter.measure.publish import finished
    from carbonmeter.sinks.emissions_log import RowContext, new_run_id, open_log, read_load
    from carbonmeter.usage import usage_between

    blocked = {*FORWARDED, signal.SIGCHLD}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        meter = Meter(cfg, interval=interval)  # its thread starts with the signals blocked
        first, load = meter.start(), read_load()
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
        usage, load = usage_between(first, last), (load, read_load())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
    usage = _with_tree_share(usage, last, tree)

    text = (json.dumps(summary.as_json(usage, command=command, exit_code=code)) + "\n"
            if as_json else summary.as_text(usage, command=command, exit_code=code))
    try:
        if output:
            with open(output, "w", encoding="utf-8") as f:
                f.write(text)
        else:
            sys.stderr.write(text)
            sys.stderr.flush()
    except OSError as e:
        print(f"carbonmeter: cannot write the summary to {output}: {e.strerror or e}",
              file=sys.stderr)
    ctx = RowContext(cfg.emissions_log.project_name, new_run_id())
    finished(usage, ctx, emissions_log=open_log(cfg.emissions_log), cfg=cfg, load=load)
    return code
