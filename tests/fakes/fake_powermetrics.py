"""A stand-in for macOS `powermetrics -f plist -i MS` (installed on PATH by the tests).

Like the real tool it refuses to run without root ("powermetrics must be invoked as the
superuser"), then writes one plist sample per interval to stdout, a NUL byte before each new
document, and keeps running until it is killed. The samples come from the file named by
FAKE_POWERMETRICS_STREAM (a recorded-format stream, tests/fixtures/powermetrics.py). Each
sample is written in two pieces with a pause between them, so a reader sees a partial
document at a pipe boundary. FAKE_POWERMETRICS_EXIT_AFTER=N makes it fail after N samples;
FAKE_POWERMETRICS_UNPRIVILEGED=1 makes it behave as when run without root;
FAKE_POWERMETRICS_NO_ANE=1 rejects the ane_power sampler, which macOS 12 lacks.
"""

import os
import sys
import time


def main() -> int:
    args = sys.argv[1:]
    interval = int(args[args.index("-i") + 1]) / 1000 if "-i" in args else 5.0
    if "-f" not in args or args[args.index("-f") + 1] != "plist":
        print("fake powermetrics: only -f plist is recorded", file=sys.stderr)
        return 2
    samplers = args[args.index("--samplers") + 1].split(",") if "--samplers" in args else []
    if "ane_power" in samplers and os.environ.get("FAKE_POWERMETRICS_NO_ANE"):
        print("powermetrics: unrecognized sampler: ane_power", file=sys.stderr)
        return 1
    if os.geteuid() != 0 or os.environ.get("FAKE_POWERMETRICS_UNPRIVILEGED"):
        print("powermetrics must be invoked as the superuser", file=sys.stderr)
        return 1
    with open(os.environ["FAKE_POWERMETRICS_STREAM"], "rb") as f:
        docs = f.read().split(b"\0")
    exit_after = int(os.environ.get("FAKE_POWERMETRICS_EXIT_AFTER", "0"))
    out = sys.stdout.buffer
    for i, doc in enumerate(docs):
        time.sleep(interval)
        half = len(doc) // 2
        out.write((b"\0" if i else b"") + doc[:half])
        out.flush()
        time.sleep(min(0.05, interval / 3))  # the rest arrives later: a pipe boundary
        out.write(doc[half:])
        out.flush()
        if exit_after and i + 1 == exit_after:
            print("powermetrics: unable to sample (recorded failure)", file=sys.stderr)
            return 1
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
