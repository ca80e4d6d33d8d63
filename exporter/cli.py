"""The `carbonmeter` command: serve, run, report, probes, regions, config check."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from carbonmeter.config import Config, ConfigError

log = logging.getLogger("carbonmeter")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _load(args: argparse.Namespace, **cli: object) -> Config:
    from carbonmeter import config

    return config.load(args.config, overrides={k: v for k, v in cli.items() if v is not None})


def serve(args: argparse.Namespace) -> int:
    from carbonmeter import app

    # SIGTERM and SIGINT are taken by sigwait() in app.serve, never by a handler: a handler
    # that wakes the main thread can deadlock when it interrupts that thread inside the very
    # Event it sets. Blocked before any thread starts, so every thread inherits the mask;
    # a signal during start-up waits, and then stops the exporter cleanly.
    signal.pthread_sigmask(signal.SIG_BLOCK, app.STOP_SIGNALS)
    cfg = _load(args, **{"server.listen": args.listen, "sampler.interval_seconds": args.interval,
                         "server.web_config_file": args.web_config_file})
    _setup_logging(cfg.log.level)
    return app.serve(cfg)


def run(args: argparse.Namespace) -> int:
    from carbonmeter.measure.run import run as run_command

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("carbonmeter run: no command given; usage: carbonmeter run [--config FILE] "
              "[--interval S] [--output FILE] [--json] -- CMD ARGS...", file=sys.stderr)
        return 2
    if args.interval is not None and not 0.01 <= args.interval <= 3600:
        print(f"carbonmeter run: --interval {args.interval:g} is out of range from 0.01 to "
              "3600 seconds", file=sys.stderr)
        return 2
    cfg = _load(args)
    # The command's own output shares our stderr: say only what went wrong, and the summary.
    _setup_logging("debug" if cfg.log.level == "debug" else "warning")
    return run_command(cfg, command, interval=args.interval, output=args.output,
                       as_json=args.json)


def report(args: argparse.Namespace) -> int:
    from carbonmeter.report import main as report_main

    _setup_logging("warning")
    return report_main(args.file, html=args.html)


def probes(args: argparse.Namespace) -> int:
    from carbonmeter.app import describe

    cfg = _load(args)
    _setup_logging("error")
    sys.stdout.write(describe(cfg))
    return 0


def regions(args: argparse.Namespace) -> int:
    from carbonmeter.carbon.regions import listing, select

    rows = select(args.search, args.provider)
    if not rows:
        print("no region matches; `carbonmeter regions` lists them all", file=sys.stderr)
        return 1
    sys.stdout.write(listing(rows))
    print(f"\n{len(rows)} region{'' if len(rows) == 1 else 's'}. Use as carbon.region (country, "
          "state, province, zone) or carbon.cloud: {provider: P, region: CODE} (cloud).",
          file=sys.stderr)
    return 0


def config_check(args: argparse.Namespace) -> int:
    from carbonmeter import config
    from carbonmeter.app import check

    cfg = config.load(args.file)
    check(cfg)
    sys.stdout.write(f"# {args.file}: valid; the effective configuration:\n")
    sys.stdout.write(config.dump(cfg))
    return 0


class _Version(argparse.Action):
    """--version, looked up only when asked (reading package metadata costs 30 ms)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from carbonmeter.version import version

        print(f"carbonmeter {version()}")  # on stdout, as argparse's own version action
        parser.exit()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="carbonmeter", description="Measure the energy computers spend and the CO2eq "
        "it emits; export it to Prometheus, OTLP and a Pushgateway.")
    p.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the exporter")
    s.add_argument("--config", metavar="FILE", help="YAML configuration (default: built in)")
    s.add_argument("--listen", metavar="HOST:PORT", help="listen address (default 0.0.0.0:29100)")
    s.add_argument("--interval", metavar="SECONDS", type=float,
                   help="sampling interval, 0.1 and up (default 15)")
    s.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                   help="TLS and basic auth, in the Prometheus exporter-toolkit format")
    s.set_defaults(func=serve)

    s = sub.add_parser("run", help="run a command and print the energy and CO2eq it cost",
                       description="Run CMD as `time` does and print, on stderr, the energy "
                       "and CO2eq spent while it ran (the whole machine's).")
    s.add_argument("--config", metavar="FILE", help="YAML configuration (default: built in)")
    s.add_argument("--interval", metavar="SECONDS", type=float,
                   help="how often power sources are read while CMD runs (default 1); "
                   "energy counters are read at start and end")
    s.add_argument("--output", metavar="FILE", help="write the summary to FILE, not stderr")
    s.add_argument("--json", action="store_true", help="the summary as one JSON object")
    s.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...")
    s.set_defaults(func=run)

    s = sub.add_parser("report", help="summarise an emissions log: totals, regions, "
                       "equivalents; --html for a page with charts")
    s.add_argument("file", metavar="FILE", help="an emissions log (CSV or JSON Lines)")
    s.add_argument("--html", metavar="OUT.html", help="also write a self-contained HTML page")
    s.set_defaults(func=report)

    s = sub.add_parser("probes", help="show what each probe found on this machine")
    s.add_argument("--config", metavar="FILE")
    s.set_defaults(func=probes)

    s = sub.add_parser("regions", help="list the bundled regions with their intensity, "
                       "source and year")
    s.add_argument("--search", metavar="TEXT",
                   help="only rows whose code, name or kind contain every word of TEXT")
    s.add_argument("--provider", metavar="P", type=str.lower,
                   choices=("aws", "azure", "gcp", "country", "state", "province", "zone"),
                   help="aws, azure or gcp for cloud regions; country, state, province or "
                   "zone for grid regions")
    s.set_defaults(func=regions)

    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    s = csub.add_parser("check", help="validate FILE and print the effective configuration")
    s.add_argument("file", metavar="FILE")
    s.set_defaults(func=config_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        # one line, and no terminal control codes from whatever the file contained
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(e))
        print(f"carbonmeter: configuration error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
