"""A stand-in for `ipmitool [interface args] dcmi power reading` (installed on PATH by tests).

It prints what ipmitool 1.8.19 prints, byte for byte (lib/ipmi_dcmi.c: ipmi_dcmi_pwr_rd and
chk_rsp; the open error from the openipmi interface), for the case named in
FAKE_IPMITOOL_CASE:

- ``ok``: a reading, "activated", watts from the file FAKE_IPMITOOL_WATTS (so a test can
  change the power between readings); ``deactivated-zero``: "deactivated" and 0 W;
  ``deactivated-openbmc``: "deactivated" with a real reading (OpenBMC does this);
  ``zero``: "activated" and 0 W (a BMC without a meter);
- ``nodev`` / ``eacces``: no /dev/ipmi0, or no permission on it;
- ``invalid``: the BMC rejects the DCMI command (completion code c1);
- ``hang``: no answer (a BMC stuck in a KCS transaction).

The arguments of each run are appended to FAKE_IPMITOOL_CALLS when set.
"""

import os
import sys
import time

READING = """
    Instantaneous power reading:              {w:8d} Watts
    Minimum during sampling period:           {lo:8d} Watts
    Maximum during sampling period:           {hi:8d} Watts
    Average power reading over sample period: {avg:8d} Watts
    IPMI timestamp:                           {stamp}
    Sampling period:                          {period:08d} Seconds.
    Power reading state is:                   {state}

"""
OPEN = "Could not open device at /dev/ipmi0 or /dev/ipmi/0 or /dev/ipmidev/0: {}\n"


def main() -> int:
    if os.environ.get("FAKE_IPMITOOL_CALLS"):
        with open(os.environ["FAKE_IPMITOOL_CALLS"], "a") as f:
            f.write(" ".join(sys.argv[1:]) + "\n")
    if sys.argv[-3:] != ["dcmi", "power", "reading"]:
        print("fake ipmitool: only `dcmi power reading` is recorded", file=sys.stderr)
        return 1
    case = os.environ.get("FAKE_IPMITOOL_CASE", "ok")
    if case == "nodev":
        sys.stderr.write(OPEN.format("No such file or directory"))
        return 1
    if case == "eacces":
        sys.stderr.write(OPEN.format("Permission denied"))
        return 1
    if case == "invalid":
        sys.stderr.write("\n    DCMI request failed because: Invalid command (c1)\n")
        return 1
    if case == "hang":
        time.sleep(30)
        return 1
    watts = {"zero": 0, "deactivated-zero": 0, "deactivated-openbmc": 235}.get(case)
    if watts is None:
        with open(os.environ["FAKE_IPMITOOL_WATTS"]) as f:
            watts = int(f.read())
    deactivated = case.startswith("deactivated")
    sys.stdout.write(READING.format(
        w=watts, lo=watts if deactivated else 88, hi=watts if deactivated else 516, avg=watts,
        stamp="Thu Jan  1 00:00:00 1970" if deactivated else "Thu Feb 15 08:36:01 2024",
        period=0 if deactivated else 1, state="deactivated" if deactivated else "activated"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
