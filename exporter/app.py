"""`carbonmeter serve`: the exporter process, built from the configuration, started in order,
stopped in reverse.

`build()` makes every part and fails before anything runs: an unknown region, a bad web
configuration or a port in use ends the process with one line. `App.start()` then takes the
first reading of every probe (so every sink starts from real readings) and starts the live
intensity providers, the sinks, and the sampling loop last; `App.stop()` closes them in
reverse, so the sampler's last sample comes before every sink's final export, push, log row
and checkpoint.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from carbonmeter import state
from carbonmeter.config import Config, ConfigError, parse_listen
from carbonmeter.discovery import discover, unavailable
from carbonmeter.periodic import Periodic
from carbonmeter.sampler import Sampler
from carbonmeter.sinks.prometheus import PrometheusSink

if TYPE_CHECKING:
    from carbonmeter.attribution import Attributor
    from carbonmeter.carbon.intensity import IntensitySource
    from carbonmeter.server.webconfig import WebConfig
    from carbonmeter.sinks import Sink

log = logging.getLogger(__name__)
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class Part(Protocol):
    name: str

    def start(self) -> None: ...

    def close(self) -> None: ...


class _Loop:
    """The sampling loop as a part: its first sample is App.start()'s, taken already."""

    name = "sampler"

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def start(self) -> None:
        self.sampler.start(first_now=False)

    def close(self) -> None:
        self.sampler.close()


@dataclass
class App:
    sampler: Sampler
    parts: list[Part]  # in start order; the sampling loop is the last
    endpoint: PrometheusSink
    started: list[Part] = field(default_factory=list)

    def start(self) -> None:
        self.sampler.sample()
        for part in self.parts:
            part.start()
            self.started.append(part)

    def stop(self) -> None:
        while self.started:
            part = self.started.pop()
            try:
                part.close()
            except Exception:  # one part failing to close must not keep the others open
                log.exception("closing %s failed", part.name)


def intensity_source(cfg: Config) -> IntensitySource:
    """The configured intensity; an unknown region is a configuration error too."""
    from carbonmeter.carbon.resolve import resolve

    try:
        return resolve(cfg.carbon)
    except ConfigError as e:
        raise cfg.error(e) from None


def web_config(cfg: Config) -> WebConfig | None:
    if cfg.server.web_config_file is None:
        return None
    from carbonmeter.server import webconfig

    try:
        return webconfig.load(cfg.server.web_config_file)
    except ConfigError as e:
        raise cfg.error(ConfigError(f"server.web_config_file: {e}")) from None


def check(cfg: Config) -> None:
    """What serve refuses before it starts, beyond the file's own keys: an unknown region, a
    provider's missing secret or bad json_path, an unusable web configuration."""
    intensity_source(cfg)
    if cfg.carbon.providers:
        from carbonmeter.carbon import providers

        providers.build(cfg.carbon.providers, cfg.source)
    web_config(cfg)


def describe(cfg: Config) -> str:
    """`carbonmeter probes`: each probe, running or why not, its devices and how it measures;
    then the intensity and PUE in use."""
    probes, reports = discover(cfg)
    for p in probes:
        p.close()
    width = max(len(r.name) for r in reports)
    out = []
    for r in reports:
        out.append(f"{r.name:<{width}}  {'available' if r.available else 'not used'}")
        out.extend(f"{'':<{width}}    {line}"
                   for line in (*r.devices, *(r.notes or ((r.reason,) if r.reason else ()))))
    i = intensity_source(cfg).current()
    where = ("no carbon.region set: world average" if i.provider == "default"
             else f"region {i.region}")
    out.append(f"\ncarbon intensity: {i.g_per_kwh:g} gCO2eq/kWh ({where}; {i.source}), "
               f"PUE {cfg.carbon.pue:g}")
    if cfg.carbon.providers:
        names = ", ".join(p.name or p.type for p in cfg.carbon.providers)
        out.append(f"live providers: {names}; `serve` asks them, and uses the intensity above "
                   "when none has a fresh value")
    return "\n".join(out) + "\n"


def build(cfg: Config) -> App:
    """Every part of the exporter, wired, restored from the state file; nothing started.
    Raises ConfigError (exit 2), OSError (the port: exit 1) or state.StateRefused (the
    state file is another exporter's: exit 1)."""
    static = intensity_source(cfg)
    pollers = []
    if cfg.carbon.providers:  # urllib and ssl load only when a provider is configured
        from carbonmeter.carbon import providers

        pollers = providers.build(cfg.carbon.providers, cfg.source)
    host, port = parse_listen(cfg.server.listen)
    web = web_config(cfg)  # a bad certificate or hash stops here, before anything runs
    store = _store(cfg)  # so does a state file another exporter holds, or that is no file
    probes, reports = discover(cfg)
    for r in reports:
        if r.available:
            log.info("probe %s: %s%s", r.name, ", ".join(r.devices),
                     f" ({r.reason})" if r.reason else "")
        else:
            log.info("probe %s not used: %s", r.name, r.reason)
    _log_intensity(static)
    parts: list[Part] = []
    live = None
    if pollers:
        from carbonmeter.carbon.providers.live import LiveSource

        live = LiveSource(pollers, static)
        parts.append(live)
        log.info("live intensity from %s; until one answers, and whenever all are older "
                 "than their staleness_seconds: the intensity above",
                 ", ".join(p.name for p in pollers))
    embodied = None
    if cfg.embodied.devices:
        from carbonmeter.embodied import Embodied

        embodied = Embodied(cfg.embodied.devices)
    attributor = _attributor(cfg, probes)
    sampler = Sampler(probes, live or static, pue=cfg.carbon.pue,
                      interval=cfg.sampler.interval_seconds, embodied=embodied,
                      providers=live.statuses if live else None, attributor=attributor,
                      probe_timeout=cfg.sampler.probe_timeout_seconds,
                      unavailable=unavailable(reports))
    try:
        endpoint = PrometheusSink(host, port, lambda: sampler.latest, sampler.alive, web,
                                  healthz_auth=cfg.server.healthz_auth)
    except OSError:
        sampler.close()
        raise
    sinks = _sinks(cfg, sampler, store)
    for step in (*(live.pollers if live else ()), *sinks):
        if isinstance(step, Periodic):  # on the loop's clock: one wake-up per interval
            sampler.ticks.add(step)
    parts.extend(sinks)
    parts.append(endpoint)
    for sink in (*sinks, endpoint):
        if attributor is not None and sink.cursor is not None:
            attributor.add_reader(sink.cursor)
    parts.append(_Loop(sampler))
    log.info("serving %s://%s:%d/metrics every %gs%s", "https" if web and web.tls else "http",
             host, endpoint.port, cfg.sampler.interval_seconds,
             " with basic auth" if web and web.users else "")
    return App(sampler, parts, endpoint)


def _log_intensity(source: IntensitySource) -> None:
    now = source.current()
    if now.provider == "default":
        log.warning("no carbon.region configured: using the world average of %g gCO2eq/kWh "
                    "(%s); set carbon.region (for example FR) for your grid", now.g_per_kwh,
                    now.source)
    else:
        log.info("carbon intensity %g gCO2eq/kWh for %s (%s)", now.g_per_kwh, now.region,
                 now.source)


def _attributor(cfg: Config, probes: list) -> Attributor | None:
    if cfg.attribution.level == "none":
        return None
    from carbonmeter import attribution

    try:
        attributor = attribution.build(cfg, probes)
    except attribution.Unavailable as e:
        log.error("attribution off: %s", e)
        return None
    log.info("attribution per %s (scope %s): %s", cfg.attribution.level,
             cfg.attribution.scope, attributor.source.method if attributor else "")
    return attributor


def _store(cfg: Config) -> state.Store | None:
    """The state file, locked for this process; None when persistence is off."""
    try:
        return state.Store.open(cfg.state.path, machine=state.machine_id())
    except state.StateRefused as e:
        if e.config:
            raise cfg.error(ConfigError(str(e))) from None
        raise


def _sinks(cfg: Config, sampler: Sampler, store: state.Store | None) -> list[Sink]:
    """The sinks besides the endpoint, in start order: the checkpoints (restoring the state
    file into the sampler first), the emissions log, OTLP, the Pushgateway. An OTLP export
    that cannot be set up is reported, and the exporter goes on without it."""
    out: list[Sink] = []
    if store is not None:
        from carbonmeter.sinks.checkpoint import Checkpointer

        boot = state.boot_id(Path(cfg.paths.procfs))
        restored = store.load()
        if restored is not None:
            sampler.restore(restored, boot)
        out.append(Checkpointer(store, boot, sampler.export, cfg.state.checkpoint_seconds))
    if cfg.emissions_log.path:  # csv, uuid and the row code load only for a log
        from carbonmeter.sinks import emissions_log as rows

        out.append(rows.EmissionsLogSink(
            rows.open_log(cfg.emissions_log), lambda: sampler.latest,
            cfg.sampler.interval_seconds,
            rows.RowContext(cfg.emissions_log.project_name, rows.new_run_id())))
    if cfg.otlp.enabled:
        try:
            from carbonmeter.sinks.otlp import OtlpSink

            out.append(OtlpSink(cfg.otlp, lambda: sampler.latest))
        except Exception as e:
            log.error("OTLP export not started: %s: %s", type(e).__name__, e)
    if cfg.pushgateway.url is not None:
        from carbonmeter.sinks.pushgateway import PushgatewaySink

        out.append(PushgatewaySink(cfg.pushgateway, lambda: sampler.latest,
                                   cfg.sampler.interval_seconds))
    return out


def serve(cfg: Config) -> int:
    """Build, start, wait for SIGTERM or SIGINT, stop. The caller has blocked both signals
    (before any thread started, so every thread inherits the mask)."""
    from carbonmeter.server.http import raise_open_files_limit

    raise_open_files_limit()  # connections, probes and checkpoints share the descriptors
    try:
        app = build(cfg)
    except state.StateRefused as e:
        log.error("%s", e)
        return 1
    except OSError as e:
        log.error("cannot listen on %s: %s", cfg.server.listen, e.strerror or e)
        return 1
    app.start()
    signum = signal.sigwait(STOP_SIGNALS)
    log.info("received %s, stopping", signal.Signals(signum).name)
    app.stop()
    log.info("stopped")
    return 0
