"""Scrape latency and throughput, carbonmeter beside node_exporter, in one invocation.

Both serve on loopback and are loaded by wrk (Debian package `wrk`) with 1, 10 and 50
concurrent connections for a fixed time each; wrk's --latency percentiles and its requests per
second are reported. carbonmeter runs on the 8-device fixture host at a 15 s interval, so
every scrape within a sample is served from the same rendered exposition; node_exporter
(Debian package `prometheus-node-exporter`) runs with only its power collectors (rapl, hwmon,
powersupplyclass), without its own go_/process_ metrics and without its limit of 40
concurrent requests (--web.max-requests=0), the closest comparable endpoint.
Both without gzip (wrk does not ask for it). Installs wrk and node_exporter with apt-get when
missing.

Usage: python bench/scrape.py [--seconds S]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import FixtureHost, free_port, memory_kb, scrape, serve, table, wait_until, write_result

CONCURRENCY = (1, 10, 50)
NODE_EXPORTER = "prometheus-node-exporter"


def ensure(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True,
                       stdout=subprocess.DEVNULL)
        path = shutil.which(binary)
    assert path, f"{binary} not installed"
    return path


def to_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(url: str, connections: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [shutil.which("wrk"), f"-t{min(2, connections)}", f"-c{connections}",
         f"-d{seconds:g}s", "--latency", url], capture_output=True, text=True, check=True).stdout
    lat = dict(re.findall(r"^[ \t]+(50|99)%[ \t]+(\S+)[ \t]*$", out, re.M))
    if "99" not in lat:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)$", out, re.M)
    return {"p50": to_ms(lat["50"]), "p99": to_ms(lat["99"]),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "errors": int(errors.group(1)) if errors else 0,
            "socket": sock.group(1) if sock else ""}


@contextlib.contextmanager
def node_exporter():
    binary = ensure(NODE_EXPORTER, NODE_EXPORTER)
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
         "--collector.rapl", "--collector.hwmon", "--collector.powersupplyclass",
         "--web.disable-exporter-metrics", "--web.max-requests=0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_until(lambda: scrape(url) is not None, 30)
        yield proc, url
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="load per concurrency level")
    args = ap.parse_args()
    ensure("wrk", "wrk")
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp, FixtureHost(Path(tmp)) as host, \
            serve(host, 15.0) as (cm, cm_url), node_exporter() as (ne, ne_url):
        sizes = {"carbonmeter": len(scrape(cm_url)), "node_exporter": len(scrape(ne_url))}
        results = {}
        for c in CONCURRENCY:
            for name, url in (("carbonmeter", cm_url), ("node_exporter", ne_url)):
                results[name, c] = wrk(url, c, args.seconds)
        rss = {"carbonmeter": memory_kb(cm.pid)[1], "node_exporter": memory_kb(ne.pid)[1]}
    for c in CONCURRENCY:
        ours, peer = results["carbonmeter", c], results["node_exporter", c]
        for name, r in (("carbonmeter", ours), ("node_exporter", peer)):
            ratio = (f"{r['p99'] / peer['p99']:.2f}" if name == "carbonmeter" else "")
            rows.append([c, name, f"{r['p50']:.3f}", f"{r['p99']:.3f}", ratio,
                         f"{r['rps']:,.0f}", r["errors"], r["socket"] or "-"])
    body = table(["concurrent", "endpoint", "p50 ms", "p99 ms", "p99 ratio", "scrapes/s",
                  "non-2xx", "socket errors"], rows)
    body += "\n\n" + table(["endpoint", "response bytes", "peak RSS MB"],
                           [[n, sizes[n], f"{rss[n] / 1024:.1f}"] for n in sizes])
    write_result("scrape", "Scrape latency: carbonmeter vs node_exporter", body,
                 notes=f"wrk, {args.seconds:g} s per level, 2 threads (1 at concurrency 1), "
                       "load generator on the same machine.")


if __name__ == "__main__":
    main()
