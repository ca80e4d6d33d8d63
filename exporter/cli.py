"""The `carbonmeter` command: serve, probes, config check."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING

from exporter import __version__
from exporter.config import Config, ConfigError

if TYPE_CHECKING:
    from exporter.carbon import IntensitySource
    from exporter.webconfig import WebConfig

log = logging.getLogger("carbonmeter")
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _load(args: argparse.Namespace, **cli: object) -> Config:
    from exporter import config

    return config.load(args.config, overrides={k: v for k, v in cli.items() if v is not None})


def _intensity(cfg: Config) -> IntensitySource:
    from exporter import carbon

    try:
        return carbon.resolve(cfg.carbon)  # an unknown region is a configuration error too
    except ConfigError as e:
        raise cfg.error(e) from None


def _web_config(cfg: Config) -> WebConfig | None:
    if cfg.server.web_config_file is None:
        return None
    from exporter import webconfig

    try:
        return webconfig.load(cfg.server.web_config_file)
    except ConfigError as e:
        raise cfg.error(ConfigError(f"server.web_config_file: {e}")) from None


def serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from exporter import state
    from exporter.config import parse_listen
    from exporter.discovery import discover
    from exporter.sampler import Sampler
    from exporter.sinks.prometheus import Renderer, make_server

    # SIGTERM and SIGINT are taken by sigwait() below, never by a handler: a handler that
    # wakes the main thread can deadlock when it interrupts that thread inside the very
    # Event it sets. Blocked before any thread starts, so every thread inherits the mask;
    # a signal during start-up waits, and then stops the exporter cleanly.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    cfg = _load(args, **{"server.listen": args.listen, "sampler.interval_seconds": args.interval,
                         "server.web_config_file": args.web_config_file})
    _setup_logging(cfg.log.level)
    intensity = _intensity(cfg)
    host, port = parse_listen(cfg.server.listen)
    web = _web_config(cfg)  # a bad certificate or hash stops here, before anything runs
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
    sampler = Sampler(probes, intensity, pue=cfg.carbon.pue,
                      interval=cfg.sampler.interval_seconds,
                      probe_timeout=cfg.sampler.probe_timeout_seconds)
    try:
        server = make_server(host, port, Renderer(lambda: sampler.latest), sampler.alive, web)
    except OSError as e:
        log.error("cannot listen on %s: %s", cfg.server.listen, e.strerror or e)
        sampler.stop()
        return 1
    store = state.Store.open(cfg.state.path)
    checkpointer = None
    if store is not None:
        boot = state.boot_id(Path(cfg.paths.procfs))
        restored = store.load()
        if restored is not None:
            sampler.restore(restored, boot)
        checkpointer = state.Checkpointer(store, boot, sampler.export,
                                          cfg.state.checkpoint_seconds)
        checkpointer.start()
    sampler.start()
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("serving %s://%s:%d/metrics every %gs%s", "https" if web and web.tls else "http",
             host, server.server_address[1], cfg.sampler.interval_seconds,
             " with basic auth" if web and web.users else "")
    signum = signal.sigwait(STOP_SIGNALS)
    log.info("received %s, stopping", signal.Signals(signum).name)
    server.shutdown()
    server.server_close()
    sampler.stop()
    if checkpointer is not None:
        checkpointer.stop()  # the last checkpoint, after the last sample
    log.info("stopped")
    return 0


def probes(args: argparse.Namespace) -> int:
    from exporter.discovery import discover

    cfg = _load(args)
    _setup_logging("error")
    found, reports = discover(cfg)
    width = max(len(r.name) for r in reports)
    for r in reports:
        state = "available" if r.available else "not used"
        print(f"{r.name:<{width}}  {state}")
        for d in r.devices:
            print(f"{'':<{width}}    {d}")
        if r.reason:
            print(f"{'':<{width}}    {r.reason}")
    for p in found:
        p.close()
    i = _intensity(cfg).current()
    where = ("no carbon.region set: world average" if i.provider == "default"
             else f"region {i.region}")
    print(f"\ncarbon intensity: {i.g_per_kwh:g} gCO2eq/kWh ({where}; {i.source}), "
          f"PUE {cfg.carbon.pue:g}")
    return 0


def config_check(args: argparse.Namespace) -> int:
    from exporter import config

    cfg = config.load(args.file)
    _intensity(cfg)
    _web_config(cfg)
    sys.stdout.write(f"# {args.file}: valid; the effective configuration:\n")
    sys.stdout.write(config.dump(cfg))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="carbonmeter", description="Measure the energy computers spend and the CO2eq "
        "it emits; export it to Prometheus.")
    p.add_argument("--version", action="version", version=f"carbonmeter {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the exporter")
    s.add_argument("--config", metavar="FILE", help="YAML configuration (default: built in)")
    s.add_argument("--listen", metavar="HOST:PORT", help="listen address (default 0.0.0.0:29100)")
    s.add_argument("--interval", metavar="SECONDS", type=float,
                   help="sampling interval, 0.1 and up (default 15)")
    s.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                   help="TLS and basic auth, in the Prometheus exporter-toolkit format")
    s.set_defaults(func=serve)

    s = sub.add_parser("probes", help="show what each probe found on this machine")
    s.add_argument("--config", metavar="FILE")
    s.set_defaults(func=probes)

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
