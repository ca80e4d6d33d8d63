"""The `carbonmeter` command: serve, run, report, probes, regions, config check."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from carbonmeter.config import Config, ConfigError

if TYPE_CHECKING:
    from carbonmeter.carbon.intensity import IntensitySource
    from carbonmeter.server.webconfig import WebConfig
    from carbonmeter.snapshot import Snapshot

log = logging.getLogger("carbonmeter")
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _load(args: argparse.Namespace, **cli: object) -> Config:
    from carbonmeter import config

    return config.load(args.config, overrides={k: v for k, v in cli.items() if v is not None})


def _intensity(cfg: Config) -> IntensitySource:
    from carbonmeter.carbon.resolve import resolve

    try:
        return resolve(cfg.carbon)  # an unknown region is a configuration error too
    except ConfigError as e:
        raise cfg.error(e) from None


def _web_config(cfg: Config) -> WebConfig | None:
    if cfg.server.web_config_file is None:
        return None
    from carbonmeter.server import webconfig

    try:
        return webconfig.load(cfg.server.web_config_file)
    except ConfigError as e:
        raise cfg.error(ConfigError(f"server.web_config_file: {e}")) from None


def serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from carbonmeter import state
    from carbonmeter.config import parse_listen
    from carbonmeter.discovery import discover
    from carbonmeter.sampler import Sampler
    from carbonmeter.sinks.emissions_log import IntervalWriter, RowContext, new_run_id, open_log
    from carbonmeter.sinks.prometheus import Renderer, make_server

    # SIGTERM and SIGINT are taken by sigwait() below, never by a handler: a handler that
    # wakes the main thread can deadlock when it interrupts that thread inside the very
    # Event it sets. Blocked before any thread starts, so every thread inherits the mask;
    # a signal during start-up waits, and then stops the exporter cleanly.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    cfg = _load(args, **{"server.listen": args.listen, "sampler.interval_seconds": args.interval,
                         "server.web_config_file": args.web_config_file})
    _setup_logging(cfg.log.level)
    from carbonmeter.server.http import raise_open_files_limit

    raise_open_files_limit()  # connections, probes and checkpoints share the descriptors
    intensity = _intensity(cfg)
    pollers = []
    if cfg.carbon.providers:  # urllib and ssl load only when a provider is configured
        from carbonmeter.carbon import providers

        pollers = providers.build(cfg.carbon.providers, cfg.source)
    host, port = parse_listen(cfg.server.listen)
    web = _web_config(cfg)  # a bad certificate or hash stops here, before anything runs
    try:  # a state file held by another exporter, or that is no file, stops here too
        store = state.Store.open(cfg.state.path, machine=state.machine_id())
    except state.StateRefused as e:
        if e.config:
            raise cfg.error(ConfigError(str(e))) from None
        log.error("%s", e)
        return 1
    probes, reports = discover(cfg)
    for r in reports:
        if r.available:
            log.info("probe %s: %s%s", r.name, ", ".join(r.devices),
                     f" ({r.reason})" if r.reason else "")
        else:
            log.info("probe %s not used: %s", r.name, r.reason)
    now = intensity.current()
    if now.provider == "default":
        log.warning("no carbon.region configured: using the world average of %g gCO2eq/kWh "
                    "(%s); set carbon.region (for example FR) for your grid", now.g_per_kwh,
                    now.source)
    else:
        log.info("carbon intensity %g gCO2eq/kWh for %s (%s)", now.g_per_kwh, now.region,
                 now.source)
    live = None
    if pollers:
        from carbonmeter.carbon.providers.live import LiveSource

        live = LiveSource(pollers, intensity)
        log.info("live intensity from %s; until one answers, and whenever all are older "
                 "than their staleness_seconds: the intensity above",
                 ", ".join(p.name for p in pollers))
    embodied = None
    if cfg.embodied.devices:
        from carbonmeter.embodied import Embodied

        embodied = Embodied(cfg.embodied.devices)
    attributor = None
    if cfg.attribution.level != "none":
        from carbonmeter import attribution

        try:
            attributor = attribution.build(cfg, probes)
        except attribution.Unavailable as e:
            log.error("attribution off: %s", e)
        else:
            log.info("attribution per %s (scope %s): %s", cfg.attribution.level,
                     cfg.attribution.scope, attributor.source.method if attributor else "")
    sampler = Sampler(probes, live or intensity, pue=cfg.carbon.pue,
                      interval=cfg.sampler.interval_seconds, embodied=embodied,
                      providers=live.statuses if live else None, attributor=attributor,
                      probe_timeout=cfg.sampler.probe_timeout_seconds)
    try:
        server = make_server(host, port, Renderer(lambda: sampler.latest), sampler.alive, web)
    except OSError as e:
        log.error("cannot listen on %s: %s", cfg.server.listen, e.strerror or e)
        sampler.stop()
        return 1
    checkpointer = None
    if store is not None:
        boot = state.boot_id(Path(cfg.paths.procfs))
        restored = store.load()
        if restored is not None:
            sampler.restore(restored, boot)
        checkpointer = state.Checkpointer(store, boot, sampler.export,
                                          cfg.state.checkpoint_seconds)
        checkpointer.start()
    if live is not None:
        live.start()
    sampler.start()
    log_writer = None
    emissions_log = open_log(cfg.emissions_log)
    if emissions_log is not None:
        log_writer = IntervalWriter(emissions_log, lambda: sampler.latest,
                                    cfg.sampler.interval_seconds,
                                    RowContext(cfg.emissions_log.project_name, new_run_id()))
        log_writer.start()
        log.info("emissions log: one row per interval in %s (%s)", emissions_log.path,
                 emissions_log.format)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("serving %s://%s:%d/metrics every %gs%s", "https" if web and web.tls else "http",
             host, server.server_address[1], cfg.sampler.interval_seconds,
             " with basic auth" if web and web.users else "")
    sinks = _start_sinks(cfg, lambda: sampler.latest)  # after: their imports take a while
    signum = signal.sigwait(STOP_SIGNALS)
    log.info("received %s, stopping", signal.Signals(signum).name)
    server.shutdown()
    server.server_close()
    if live is not None:
        live.close()
    sampler.stop()
    for sink in sinks:
        sink.close()
    if log_writer is not None:
        log_writer.stop()
    if checkpointer is not None:
        checkpointer.stop()  # the last checkpoint, after the last sample
    log.info("stopped")
    return 0


def _start_sinks(cfg: Config, latest: Callable[[], Snapshot]) -> list[Any]:
    """The push sinks configured; each has close(), which sends the final totals. One
    that cannot start is reported and the exporter goes on without it."""
    sinks: list[Any] = []
    if cfg.otlp.enabled:
        try:
            from carbonmeter.sinks import otlp

            sinks.append(otlp.start(cfg.otlp, latest))
        except Exception as e:
            log.error("OTLP export not started: %s: %s", type(e).__name__, e)
    if cfg.pushgateway.url is not None:
        from carbonmeter.sinks import pushgateway

        sinks.append(pushgateway.start(cfg.pushgateway, latest, cfg.sampler.interval_seconds))
    return sinks


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
    from carbonmeter.discovery import discover

    cfg = _load(args)
    _setup_logging("error")
    found, reports = discover(cfg)
    width = max(len(r.name) for r in reports)
    for r in reports:
        state = "available" if r.available else "not used"
        print(f"{r.name:<{width}}  {state}")
        for d in r.devices:
            print(f"{'':<{width}}    {d}")
        for line in r.notes or ((r.reason,) if r.reason else ()):
            print(f"{'':<{width}}    {line}")
    for p in found:
        p.close()
    i = _intensity(cfg).current()
    where = ("no carbon.region set: world average" if i.provider == "default"
             else f"region {i.region}")
    print(f"\ncarbon intensity: {i.g_per_kwh:g} gCO2eq/kWh ({where}; {i.source}), "
          f"PUE {cfg.carbon.pue:g}")
    if cfg.carbon.providers:
        names = ", ".join(p.name or p.type for p in cfg.carbon.providers)
        print(f"live providers: {names}; `serve` asks them, and uses the intensity above when "
              "none has a fresh value")
    return 0


def regions(args: argparse.Namespace) -> int:
    from carbonmeter.carbon import regions as carbon

    rows = carbon.regions()
    if args.provider:
        rows = tuple(r for r in rows if (r.provider or r.kind) == args.provider)
    if args.search:
        words = args.search.casefold().split()
        rows = tuple(r for r in rows if all(
            w in f"{r.code} {r.alpha3} {r.name} {r.kind} {r.provider}".casefold()
            for w in words))
    if not rows:
        print("no region matches; `carbonmeter regions` lists them all", file=sys.stderr)
        return 1
    table = [(r.provider or r.kind, r.code, r.name[:44], f"{r.g_per_kwh:.1f}",
              str(r.year or "-"), r.source) for r in rows]
    head = ("provider", "code", "name", "gCO2eq/kWh", "year", "source")
    widths = [max(len(row[i]) for row in [head, *table]) for i in range(5)]
    for row in [head, *table]:
        cells = zip(row[:5], widths, strict=True)
        print("  ".join(c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(cells))
              + "  " + row[5])
    print(f"\n{len(rows)} regions. Use as carbon.region (country, state, province, zone) "
          "or carbon.cloud: {provider: P, region: CODE} (cloud).", file=sys.stderr)
    return 0


def config_check(args: argparse.Namespace) -> int:
    from carbonmeter import config

    cfg = config.load(args.file)
    _intensity(cfg)  # an unknown region is a configuration error too
    if cfg.carbon.providers:  # so are a missing secret and a bad json_path
        from carbonmeter.carbon import providers

        providers.build(cfg.carbon.providers, cfg.source)
    _web_config(cfg)
    sys.stdout.write(f"# {args.file}: valid; the effective configuration:\n")
    sys.stdout.write(config.dump(cfg))
    return 0


class _Version(argparse.Action):
    """--version, looked up only when asked (reading package metadata costs 30 ms)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from carbonmeter import __version__

        print(f"carbonmeter {__version__}")  # on stdout, as argparse's own version action
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
