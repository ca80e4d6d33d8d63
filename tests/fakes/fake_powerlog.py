"""A stand-in for Intel Power Gadget's `PowerLog -resolution MS -duration S -file LOG`
(installed on PATH by the tests; needs the repository on PYTHONPATH).

Like PowerLog it logs for -duration seconds and leaves a complete CSV (header, one row per
-resolution ms, empty line, summary) in the format of tests/fixtures/powerlog.py, for the
constant load in FAKE_POWERLOG_LOADS (JSON list per package of [processor, ia, dram, gt]
watts). FAKE_POWERLOG_TIME_SCALE shrinks the wall time it takes (0.05: a 1 s log in 50 ms).
Each invocation's arguments are appended to FAKE_POWERLOG_CALLS when set.
FAKE_POWERLOG_FAIL=message makes it print that and exit 1 without a log.
"""

import json
import os
import sys
import time

from tests.fixtures.powerlog import WINDOWS, Load, log


def main() -> int:
    args = sys.argv[1:]
    if os.environ.get("FAKE_POWERLOG_CALLS"):
        with open(os.environ["FAKE_POWERLOG_CALLS"], "a") as f:
            f.write(json.dumps(args) + "\n")
    if os.environ.get("FAKE_POWERLOG_FAIL"):
        print(os.environ["FAKE_POWERLOG_FAIL"])
        return 1
    opts = dict(zip(args[::2], args[1::2], strict=False))
    if "-file" not in opts:
        print("Usage: PowerLog [-resolution <ms>] [-duration <s>] [-file <log>] [-cmd ...]")
        return 1
    seconds = float(opts.get("-duration", "1"))
    resolution = int(opts.get("-resolution", "100"))
    loads = [Load(*w) for w in json.loads(os.environ["FAKE_POWERLOG_LOADS"])]
    time.sleep(seconds * float(os.environ.get("FAKE_POWERLOG_TIME_SCALE", "1")))
    with open(opts["-file"], "w", newline="") as f:
        f.write(log(loads, seconds, resolution, WINDOWS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
