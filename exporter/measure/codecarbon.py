"""CodeCarbon 3.3.2's tracking API on carbonmeter's measurements: change the import.

    from carbonmeter import EmissionsTracker      # was: from codecarbon import EmissionsTracker

    tracker = EmissionsTracker(project_name="train", country_iso_code="FRA")
    tracker.start()
    ...
    kg = tracker.stop()                           # kg CO2eq, tracker.final_emissions_data

Every keyword of CodeCarbon's `EmissionsTracker`, `OfflineEmissionsTracker` and
`track_emissions` is accepted, from the call, `CODECARBON_*` variables or a
`.codecarbon.config` file (`carbonmeter.measure.codecarbon_config`), with CodeCarbon's
precedence. Those that mean something here are honoured; the others (CodeCarbon's online
dashboard, its Logfire and BoAmps outputs, ...) log one line naming the keyword and why.

What is written is CodeCarbon's: `output_dir/output_file` gets one row per flush() and stop()
holding the run's total so far (CodeCarbon's 38 columns, then carbonmeter's own), finished
tasks go to `emissions_<experiment_name>_<run_id>.csv`, and results are `EmissionsData`
(kWh, kg, W, s; PUE applied as CodeCarbon applies it). carbonmeter's richer `Usage` is
`EmissionsData.usage` and `tracker.result`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import inspect
import json
import logging
import math
import os
import re
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

from carbonmeter.measure.codecarbon_config import parse as parse_conf
from carbonmeter.measure.codecarbon_config import read as read_conf
from carbonmeter.sinks.emissions_log import (
    CODECARBON_COLUMNS,
    DEFAULT_EXPERIMENT_ID,
    TASK_COLUMNS,
    Load,
    Location,
    RowContext,
    location_of,
    read_load,
    row,
)

log = logging.getLogger(__name__)

__all__ = ["EmissionsData", "EmissionsTracker", "LoggerOutput", "OfflineEmissionsTracker",
           "OutputMethod", "TaskEmissionsData", "track_emissions"]


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()  # a keyword not given, so the configuration or the default applies


class OutputMethod(str, Enum):
    """CodeCarbon's output methods, for `output_methods=[...]` (strings work too)."""

    CSV = "csv"
    API = "api"
    LOGGER = "logger"
    PROMETHEUS = "prometheus"
    LOGFIRE = "logfire"
    BOAMPS = "boamps"


@dataclasses.dataclass
class EmissionsData:
    """One span as CodeCarbon reports it: kWh, kg CO2eq, W, s, L; power and energy with the
    PUE applied. `usage` (not a field) is carbonmeter's Usage of the same span."""

    timestamp: str
    project_name: str
    run_id: str
    experiment_id: str
    duration: float
    emissions: float
    emissions_rate: float
    cpu_power: float
    gpu_power: float
    ram_power: float
    cpu_energy: float
    gpu_energy: float
    ram_energy: float
    energy_consumed: float
    water_consumed: float
    country_name: str
    country_iso_code: str
    region: str
    cloud_provider: str
    cloud_region: str
    os: str
    python_version: str
    codecarbon_version: str
    cpu_count: float
    cpu_model: str
    gpu_count: float
    gpu_model: str
    longitude: float
    latitude: float
    ram_total_size: float
    tracking_mode: str
    cpu_utilization_percent: float = 0.0
    gpu_utilization_percent: float = 0.0
    ram_utilization_percent: float = 0.0
    ram_used_gb: float = 0.0
    on_cloud: str = "N"
    pue: float = 1
    wue: float = 0

    @property
    def values(self) -> OrderedDict[str, Any]:
        return OrderedDict((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))

    def compute_delta_emission(self, previous_emission: EmissionsData) -> None:
        """Make this total the difference from an earlier total of the same run."""
        self.duration -= previous_emission.duration
        self.emissions -= previous_emission.emissions
        for name in ("cpu_energy", "gpu_energy", "ram_energy", "energy_consumed",
                     "water_consumed"):
            setattr(self, name, getattr(self, name) - getattr(previous_emission, name))
        self.emissions_rate = self.emissions / self.duration if self.duration > 0 else 0

    def toJSON(self) -> str:  # CodeCarbon's name
        return json.dumps(self.values, sort_keys=True, indent=4)


_TYPES = {f.name: f.type for f in dataclasses.fields(EmissionsData)} | {"task_name": "str"}
TaskEmissionsData = dataclasses.make_dataclass(
    "TaskEmissionsData", [(c, _TYPES[c]) for c in TASK_COLUMNS],
    namespace={"__doc__": "One task as CodeCarbon hands it to output handlers' task_out().",
               "values": property(lambda self: OrderedDict(dataclasses.asdict(self)))})


class LoggerOutput:
    """CodeCarbon's LoggerOutput: each flush() and stop() logs the run's totals on `logger`
    at `severity`, as one JSON object of EmissionsData's fields."""

    def __init__(self, logger: logging.Logger, severity: int = logging.INFO) -> None:
        self.logger = logger
        self.logging_severity = severity

    def out(self, total: EmissionsData, delta: EmissionsData | None) -> None:
        self.logger.log(self.logging_severity, msg=json.dumps(dataclasses.asdict(total)))

    def live_out(self, total: EmissionsData, delta: EmissionsData | None) -> None:
        self.out(total, None)

    def task_out(self, data: list[Any], experiment_name: str) -> None:
        pass

    def exit(self) -> None:
        pass


# CodeCarbon 3.3.2's keywords: (default, the type a configured string is read as).
PARAMS: dict[str, tuple[Any, Any]] = {
    "project_name": ("codecarbon", str),
    "measure_power_secs": (15.0, float),
    "api_call_interval": (8, int),
    "api_endpoint": ("https://api.codecarbon.io", str),
    "api_key": ("api_key", str),
    "output_dir": (".", str),
    "output_file": ("emissions.csv", str),
    "output_methods": (None, str),
    "save_to_file": (True, bool),
    "save_to_api": (False, bool),
    "save_to_logger": (False, bool),
    "logging_logger": (None, None),
    "save_to_prometheus": (False, bool),
    "save_to_logfire": (False, bool),
    "prometheus_url": ("localhost:9091", str),
    "output_handlers": ((), None),
    "gpu_ids": (None, str),
    "emissions_endpoint": (None, str),
    "experiment_id": (DEFAULT_EXPERIMENT_ID, str),
    "experiment_name": ("base", str),
    "electricitymaps_api_token": (None, str),
    "co2_signal_api_token": (None, str),
    "tracking_mode": ("machine", str),
    "log_level": ("info", str),
    "on_csv_write": ("append", str),
    "logger_preamble": ("", str),
    "force_cpu_power": (None, float),
    "force_ram_power": (None, float),
    "pue": (1.0, float),
    "wue": (0.0, float),
    "force_carbon_intensity_g_co2e_kwh": (None, float),
    "force_mode_cpu_load": (False, bool),
    "allow_multiple_runs": (True, bool),
    "rapl_include_dram": (False, bool),
    "rapl_prefer_psys": (False, bool),
    "metadata": (None, str),
    # OfflineEmissionsTracker's
    "country_iso_code": (None, str),
    "region": (None, str),
    "cloud_provider": (None, str),
    "cloud_region": (None, str),
    "country_2letter_iso_code": (None, str),
    # CodeCarbon 2's, still found in scripts
    "default_cpu_power": (None, float),
}
_DASHBOARD = "CodeCarbon's online dashboard API is not used (nothing is sent anywhere)"
NO_MEANING = {  # keyword: why it does nothing here, logged once when it is set
    "api_call_interval": "outputs are written at flush() and stop(), not between them",
    "api_endpoint": _DASHBOARD,
    "api_key": _DASHBOARD,
    "save_to_api": _DASHBOARD,
    "emissions_endpoint": "there is no HTTP output; use save_to_prometheus (a Pushgateway) "
                          "or `carbonmeter serve` with OTLP",
    "electricitymaps_api_token": "live grid intensity is set in carbonmeter's configuration "
                                 "(carbon.providers, type electricitymaps)",
    "co2_signal_api_token": "live grid intensity is set in carbonmeter's configuration "
                            "(carbon.providers, type electricitymaps)",
    "country_2letter_iso_code": "CodeCarbon uses it for Electricity Maps only; the grid is "
                                "set by country_iso_code",
    "save_to_logfire": "there is no Logfire output",
    "logger_preamble": "carbonmeter logs through the logging module: format it with a handler",
    "force_mode_cpu_load": "a CPU sensor that can be read is always preferred to the load "
                           "estimate",
    "metadata": "it feeds CodeCarbon's BoAmps output, which carbonmeter does not write",
}
_OUTPUTS_ELSEWHERE = {"api": _DASHBOARD, "logfire": "there is no Logfire output",
                      "boamps": "there is no BoAmps output"}
_LOCK = Path(tempfile.gettempdir()) / ".carbonmeter-tracker.lock"


def _settings(given: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Each keyword's value (the call's, else CodeCarbon's configuration, else CodeCarbon's
    default) and the keywords set by either."""
    conf = read_conf()
    values, set_ = {}, set()
    for name, (default, kind) in PARAMS.items():
        if name in given:
            values[name], _ = given[name], set_.add(name)
        elif name in conf and kind is not None:
            value, where = conf[name]
            parsed = parse_conf(name, value, kind, where)
            values[name] = default if parsed is None else parsed
            if parsed is not None:
                set_.add(name)
        else:
            values[name] = default
    return values, set_


def _gpu_ids(value: Any) -> list[str] | None:
    """CodeCarbon's gpu_ids (a list, or "0,1"), else CUDA_VISIBLE_DEVICES, as NVML names."""
    if value is None:
        value = os.environ.get("CUDA_VISIBLE_DEVICES") or os.environ.get("ROCR_VISIBLE_DEVICES")
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [s for s in (str(i).strip() for i in items) if s]


def _output_methods(s: dict[str, Any]) -> set[str]:
    methods = s["output_methods"]
    if methods is not None:
        if isinstance(methods, str):
            methods = [m for m in methods.split(",") if m.strip()]
        out = set()
        for m in methods:
            name = m.value if isinstance(m, Enum) else str(m).strip().lower()
            if name not in {o.value for o in OutputMethod}:
                raise ValueError(f"output_methods: {name!r} is not one of "
                                 f"{', '.join(o.value for o in OutputMethod)}")
            out.add(name)
        return out
    flags = {"csv": "save_to_file", "api": "save_to_api", "logger": "save_to_logger",
             "prometheus": "save_to_prometheus", "logfire": "save_to_logfire"}
    return {m for m, flag in flags.items() if s[flag]}


def _without_platform(cfg: Any) -> Any:
    """CodeCarbon counts the CPU, GPUs and RAM, not the rest of the server: a CodeCarbon
    tracker leaves the platform estimate out, so energy_consumed is the sum of its parts."""
    disabled = cfg.probes.disabled
    if "platform_model" in disabled:
        return cfg
    probes = dataclasses.replace(cfg.probes, disabled=[*disabled, "platform_model"])
    return dataclasses.replace(cfg, probes=probes)


def _with_section(cfg: Any, name: str, **changes: Any) -> Any:
    """The configuration with some keys of a probe's section changed (values checked here,
    not by the section's limits: a forced power may be 0 W)."""
    section = dataclasses.replace(cfg.section(name), **changes)
    return dataclasses.replace(cfg, probe_sections={**cfg.probe_sections, name: section})


def _number(name: str, value: Any) -> float | None:
    """A forced figure: a finite number >= 0, else None with CodeCarbon's warning."""
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x) or x < 0:
        log.warning("%s=%r is not a number >= 0: ignored", name, value)
        return None
    return x


class EmissionsTracker:
    """CodeCarbon's EmissionsTracker, measured by carbonmeter's probes and accounting.

    `config` (carbonmeter's own YAML configuration; default: the built-in one and
    CARBONMETER_* variables) sets everything CodeCarbon's keywords do not.
    """

    def __init__(  # CodeCarbon 3.3.2's keywords, in its order; then the offline ones
        self, project_name: Any = UNSET, measure_power_secs: Any = UNSET,
        api_call_interval: Any = UNSET, api_endpoint: Any = UNSET, api_key: Any = UNSET,
        output_dir: Any = UNSET, output_file: Any = UNSET, output_methods: Any = UNSET,
        save_to_file: Any = UNSET, save_to_api: Any = UNSET, save_to_logger: Any = UNSET,
        logging_logger: Any = UNSET, save_to_prometheus: Any = UNSET,
        save_to_logfire: Any = UNSET, prometheus_url: Any = UNSET,
        output_handlers: Any = UNSET, gpu_ids: Any = UNSET, emissions_endpoint: Any = UNSET,
        experiment_id: Any = UNSET, experiment_name: Any = UNSET,
        electricitymaps_api_token: Any = UNSET, co2_signal_api_token: Any = UNSET,
        tracking_mode: Any = UNSET, log_level: Any = UNSET, on_csv_write: Any = UNSET,
        logger_preamble: Any = UNSET, force_cpu_power: Any = UNSET,
        force_ram_power: Any = UNSET, pue: Any = UNSET, wue: Any = UNSET,
        force_carbon_intensity_g_co2e_kwh: Any = UNSET, force_mode_cpu_load: Any = UNSET,
        allow_multiple_runs: Any = UNSET, rapl_include_dram: Any = UNSET,
        rapl_prefer_psys: Any = UNSET, metadata: Any = UNSET, country_iso_code: Any = UNSET,
        region: Any = UNSET, cloud_provider: Any = UNSET, cloud_region: Any = UNSET,
        country_2letter_iso_code: Any = UNSET, default_cpu_power: Any = UNSET, *,
        config: str | os.PathLike[str] | None = None,
    ) -> None:
        # locals() holds exactly the parameters here: the keywords the call gave.
        given = {k: v for k, v in locals().items()
                 if k in PARAMS and v is not UNSET}
        s, set_ = _settings(given)
        self._s = s
        self.name = ""  # the Usage's name: the decorated function's, for track_emissions
        self._error = ""  # the exception that ended a `with` block or a decorated call
        if "log_level" in set_:
            level = s["log_level"]
            logging.getLogger("carbonmeter").setLevel(
                level.upper() if isinstance(level, str) else level)
        if s["tracking_mode"] not in ("machine", "process"):
            raise ValueError(f"tracking_mode: {s['tracking_mode']!r}: use 'machine' or "
                             "'process'")
        if s["on_csv_write"] not in ("append", "update"):
            raise ValueError(f"on_csv_write: {s['on_csv_write']!r}: use 'append' or 'update'")
        if not os.path.isdir(s["output_dir"]):
            raise OSError(f"Folder '{s['output_dir']}' doesn't exist !")  # CodeCarbon's words
        for key in sorted(set_ & NO_MEANING.keys()):
            if s[key] != PARAMS[key][0]:
                log.warning("%s: ignored: %s", key, NO_MEANING[key])
        self._methods = _output_methods(s)
        for m in sorted(self._methods & _OUTPUTS_ELSEWHERE.keys()):
            log.warning("output method %s: ignored: %s", m, _OUTPUTS_ELSEWHERE[m])
        self.metadata = self._metadata(s["metadata"])
        self.cfg, self._location = self._carbonmeter_config(s, set_, config)
        self.run_id = uuid.uuid4()
        self._ctx = RowContext(s["project_name"], str(self.run_id), str(s["experiment_id"]),
                               wue=_number("wue", s["wue"]) or 0.0, location=self._location,
                               dram_in_cpu=bool(s["rapl_include_dram"]))
        self._handlers = self._output_handlers(s)
        self._lock_fd: int | None = None
        self._blocked = not s["allow_multiple_runs"] and not self._take_lock()
        self._meter: Any = None
        self._mutex = threading.RLock()  # the tracker may be stopped by a signal handler
        self._start: tuple[Any, Load | None] | None = None
        self._flushed: Any = None  # the snapshot of the last flush, for delta outputs
        self._tasks: dict[str, _Task] = {}
        self._active: str | None = None
        self.final_emissions: float | None = None
        self.final_emissions_data: EmissionsData | None = None
        self.result: Any = None  # carbonmeter's Usage of the whole run, once stopped

    # -- what the keywords set up ----------------------------------------------------------

    def _carbonmeter_config(self, s: dict[str, Any], set_: set[str],
                            config: str | os.PathLike[str] | None) -> tuple[Any, Location | None]:
        from carbonmeter import config as config_module
        from carbonmeter.carbon.regions import find_cloud, find_region
        from carbonmeter.carbon.resolve import resolve

        o: dict[str, Any] = {"emissions_log.format": "csv"}
        o["emissions_log.path"] = (str(Path(s["output_dir"]) / s["output_file"])
                                   if "csv" in self._methods else None)
        o["emissions_log.project_name"] = s["project_name"]
        if "pue" in set_:
            o["carbon.pue"] = float(s["pue"])
        place = None
        if s["cloud_provider"]:
            if not s["cloud_region"]:
                log.error("cloud_provider %s without cloud_region: ignored (give both)",
                          s["cloud_provider"])
            else:
                try:
                    place = find_cloud(str(s["cloud_provider"]).lower(), s["cloud_region"])
                except config_module.ConfigError as e:
                    raise config_module.ConfigError(f"cloud_region={s['cloud_region']!r}: "
                                                    f"{e}") from None
                o["carbon.cloud"] = {"provider": place.provider, "region": place.code}
        if place is None and (s["country_iso_code"] or s["region"]):
            country = None
            if s["country_iso_code"]:
                try:
                    country = find_region(s["country_iso_code"])
                except config_module.ConfigError as e:
                    raise config_module.ConfigError(
                        f"country_iso_code={s['country_iso_code']!r}: {e}") from None
            sub = None
            if s["region"]:
                with contextlib.suppress(config_module.ConfigError):
                    sub = find_region(s["region"])
                if sub is None or sub.kind not in ("state", "province", "zone"):
                    log.warning("region %r: not a US state, Canadian province or grid zone in "
                                "the bundled table; ignored", s["region"])
                    sub = None
            place = sub or country
            if place is not None:
                o["carbon.region"] = place.code
        intensity = _number("force_carbon_intensity_g_co2e_kwh",
                            s["force_carbon_intensity_g_co2e_kwh"])
        if intensity is not None:
            o["carbon.intensity_g_per_kwh"] = intensity
        gpus = _gpu_ids(s["gpu_ids"])
        if gpus is not None:
            o["gpu.devices"] = gpus
        if s["rapl_prefer_psys"]:
            o["rapl.psys"] = True
        if "prometheus" in self._methods:
            url = str(s["prometheus_url"])
            o["pushgateway.url"] = url if "://" in url else f"http://{url}"
            o["pushgateway.job"] = re.sub(r"[^a-zA-Z0-9_-]", "_",
                                          f"{s['project_name']}_{s['experiment_name']}")
        cfg = config_module.cached(config, overrides=o)
        cfg = self._forced_power(cfg, s)
        cfg = _without_platform(cfg)
        resolve(cfg.carbon)  # an unknown region fails here, not at start()
        return cfg, location_of(place) if place is not None else None

    @staticmethod
    def _forced_power(cfg: Any, s: dict[str, Any]) -> Any:
        """force_cpu_power: the CPU's TDP for the load estimate; default_cpu_power: the same
        when the CPU is not in the TDP table; force_ram_power: the RAM estimate's watts."""
        cpu_w = _number("force_cpu_power", s["force_cpu_power"])
        default_w = _number("default_cpu_power", s["default_cpu_power"])
        if cpu_w is None and default_w is not None:
            from carbonmeter.probes.cpu_model import read_cpuinfo, tdp_table
            from carbonmeter.probes.cpu_names import lookup_tdp

            model = read_cpuinfo(Path(cfg.paths.procfs))[0]
            cpu_w = None if model and lookup_tdp(model, tdp_table()) else default_w
        if cpu_w is not None:
            cfg = _with_section(cfg, "cpu", tdp_watts=cpu_w)
        ram_w = _number("force_ram_power", s["force_ram_power"])
        if ram_w is not None:
            from carbonmeter.probes.ram_model import installed_gb

            try:
                gb = installed_gb((Path(cfg.paths.procfs) / "meminfo").read_text())
            except (OSError, ValueError) as e:
                log.warning("force_ram_power: cannot read MemTotal (%s): ignored", e)
            else:
                cfg = _with_section(cfg, "ram", watts_per_gb=ram_w / gb if gb > 0 else 0.0)
        return cfg

    def _output_handlers(self, s: dict[str, Any]) -> list[Any]:
        handlers = [h for h in (s["output_handlers"] or ()) if hasattr(h, "out")]
        if "logger" in self._methods:
            out = s["logging_logger"]
            if isinstance(out, logging.Logger):
                out = LoggerOutput(out)
            if out is None or not hasattr(out, "out"):
                log.error("save_to_logger: no logging_logger given (a LoggerOutput or a "
                          "logging.Logger): nothing is logged")
            else:
                handlers.append(out)
        return handlers

    @staticmethod
    def _metadata(value: Any) -> dict[str, Any] | None:
        """CodeCarbon's metadata: a dict, or the path of a JSON file holding one."""
        if isinstance(value, str) and value:
            try:
                value = json.loads(Path(value).read_text(encoding="utf-8"))
            except OSError as e:
                log.error("metadata file %s: cannot read: %s", value, e.strerror or e)
                return None
            except ValueError as e:
                log.error("metadata file %s: invalid JSON: %s", value, e)
                return None
        return value if isinstance(value, dict) else None

    def _take_lock(self) -> bool:
        """allow_multiple_runs=False: one tracker at a time on this machine (an flock on a
        file in the temporary directory, released when the tracker stops or the process
        ends). False when another holds it."""
        fd = os.open(_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            log.error("another tracker is running (it holds %s) and allow_multiple_runs is "
                      "false: this one measures nothing", _LOCK)
            return False
        self._lock_fd = fd
        return True

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- measuring -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._meter is not None

    def _begin(self) -> None:
        from carbonmeter.measure.meter import FINE_INTERVAL_S, Meter

        secs = _number("measure_power_secs", self._s["measure_power_secs"])
        interval = min(secs, FINE_INTERVAL_S) if secs else None  # CodeCarbon samples each second
        meter = Meter(self.cfg, interval=interval)
        snap = meter.start()
        if self._s["tracking_mode"] == "process":
            self._attach_tree(meter)
        devices = {d.kind: d.source for p in meter.sampler.probes for d in p.devices}
        if self._s["force_cpu_power"] is not None and devices.get("cpu", "cpu_model") \
                != "cpu_model":
            log.warning("force_cpu_power: the CPU is measured by %s; the measurement is used",
                        devices["cpu"])
        if self._s["force_ram_power"] is not None and "dram" in devices:
            log.warning("force_ram_power: memory is measured by %s; the measurement is used",
                        devices["dram"])
        self._meter, self._start, self._flushed = meter, (snap, read_load()), snap
        self.final_emissions = self.final_emissions_data = self.result = None

    def _attach_tree(self, meter: Any) -> None:
        """tracking_mode="process": this process and its children's share of the machine."""
        try:
            from carbonmeter import attribution

            meter.attach(attribution.process_tree(os.getpid(), self.cfg, meter.sampler.probes))
        except Exception as e:  # measured anyway: the rows then hold the whole machine
            log.warning("tracking_mode=process: cannot attribute energy to this process "
                        "tree (%s); the whole machine is reported", e)

    def start(self) -> None:
        """Start measuring (a second call, or one after start_task, does nothing)."""
        with self._mutex:
            if self._blocked:
                log.warning("another tracker is running: not started")
                return
            if self._meter is not None:
                log.warning("Already started tracking")
                return
            self._begin()

    def start_task(self, task_name: str | None = None) -> None:
        """Start a task, and the tracker with it if it is not running. One task at a time;
        a name already used gets a suffix, as in CodeCarbon."""
        with self._mutex:
            if self._blocked:
                log.warning("another tracker is running: task not started")
                return
            if self._meter is None:
                self._begin()
            if self._active is not None:
                log.warning("A task is already under measure")
                return
            name = task_name or str(uuid.uuid4())
            if name in self._tasks:
                name = f"{name}_{uuid.uuid4()}"
            self._tasks[name] = _Task(name, self._meter.read(), read_load())
            self._active = name

    def stop_task(self, task_name: str | None = None) -> EmissionsData | None:
        """End the running task; its EmissionsData (None, with a warning, when none runs)."""
        with self._mutex:
            name = task_name or self._active
            task = self._tasks.get(name) if name else None
            if task is None or task.data is not None or self._meter is None:
                log.warning("stop_task : No active task to stop.")
                return None
            return self._end_task(task, self._meter.read())

    def _end_task(self, task: _Task, snap: Any) -> EmissionsData:
        from carbonmeter.usage import usage_between

        usage = usage_between(task.snap, snap, name=task.name)
        task.data = self._data(usage, task_name=task.name, load=(task.load, read_load()))
        if self._active == task.name:
            self._active = None
        return task.data

    def flush(self) -> float | None:
        """Write the run's total so far without stopping; kg CO2eq since the start."""
        with self._mutex:
            if self._meter is None or self._start is None:
                log.error("You first need to start the tracker.")
                return None
            snap = self._meter.read()
            total = self._emit(snap)
            return total.emissions

    def stop(self) -> float | None:
        """End the measurement and write it; kg CO2eq (without a start: the last result)."""
        with self._mutex:
            if self._blocked:
                log.warning("another tracker is running: nothing measured")
                return None
            if self._meter is None or self._start is None:
                log.warning("Tracker already stopped or never started.")
                return self.final_emissions
            meter, self._meter = self._meter, None
            snap = meter.stop()
            for task in self._tasks.values():
                if task.data is None:
                    self._end_task(task, snap)
            total = self._emit(snap)
            for h in self._handlers:
                self._call(h, "exit")
            self.final_emissions_data, self.final_emissions = total, total.emissions
            self.result = total.usage
            self._release_lock()
            return total.emissions

    def _data(self, usage: Any, *, task_name: str = "",
              load: tuple[Load | None, Load | None] | None = None) -> EmissionsData:
        r = row(usage, self._ctx, task_name=task_name, load=load)
        data = EmissionsData(**{k: r[k] for k in CODECARBON_COLUMNS})
        data.usage = usage  # type: ignore[attr-defined]
        data._row = r  # type: ignore[attr-defined]
        return data

    def _emit(self, snap: Any) -> EmissionsData:
        """CodeCarbon's outputs for the run so far: the CSV row (the run's total), the task
        file, the logger, the Pushgateway and the caller's output handlers."""
        from carbonmeter.measure.publish import push_at_exit
        from carbonmeter.sinks.emissions_log import open_log, write_task_file
        from carbonmeter.usage import usage_between

        assert self._start is not None
        start, start_load = self._start
        done = [t for t in self._tasks.values() if t.data is not None]
        usage = usage_between(start, snap, name=self.name, error=self._error,
                              tasks=tuple(t.data.usage for t in done))  # type: ignore[union-attr]
        total = self._data(usage, load=(start_load, read_load()))
        delta = self._data(usage_between(self._flushed, snap, name=self.name))
        self._flushed = snap
        emissions_log = open_log(self.cfg.emissions_log)
        if emissions_log is not None:
            try:
                if self._s["on_csv_write"] == "update":
                    emissions_log.replace_run(str(self.run_id), total._row)  # type: ignore
                else:
                    emissions_log.append([total._row])  # type: ignore[attr-defined]
                if done:
                    name = f"emissions_{self._s['experiment_name']}_{self.run_id}.csv"
                    write_task_file(Path(self._s["output_dir"]) / name,
                                    [t.data._row for t in done])  # type: ignore
            except OSError as e:
                log.error("emissions file %s: cannot write: %s", emissions_log.path,
                          e.strerror or e)
        if "prometheus" in self._methods:
            problem = push_at_exit(usage, self._ctx, self.cfg)
            if problem:
                log.error("%s", problem)
        task_data = [TaskEmissionsData(**{k: t.data._row[k]  # type: ignore[union-attr]
                                          for k in TASK_COLUMNS}) for t in done]
        for h in self._handlers:
            self._call(h, "out", total, delta)
            if task_data:
                self._call(h, "task_out", task_data, self._s["experiment_name"])
        return total

    @staticmethod
    def _call(handler: Any, method: str, *args: Any) -> None:
        """One output handler's method; what it raises is logged, the others still run."""
        fn = getattr(handler, method, None)
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("output handler %r: %s() failed", handler, method)

    # -- the rest of CodeCarbon's interface ------------------------------------------------

    def get_detected_hardware(self) -> dict[str, Any]:
        """What CodeCarbon's get_detected_hardware() returns, from carbonmeter's probes."""
        import psutil

        from carbonmeter.discovery import discover
        from carbonmeter.sinks.emissions_log import _cpu_model, _host

        if self._meter is not None:
            devices = [d for p in self._meter.sampler.probes for d in p.devices]
        else:
            probes, _ = discover(self.cfg)
            devices = [d for p in probes for d in p.devices]
            for p in probes:
                with contextlib.suppress(Exception):
                    p.close()
        gpus: dict[str, int] = {}
        for d in devices:
            if d.kind == "gpu":
                gpus[d.name or d.id] = gpus.get(d.name or d.id, 0) + 1
        cpu = next((d.name for d in devices if d.kind == "cpu" and d.name), "")
        return {"ram_total_size": _host()["ram_total_size"], "cpu_count": _host()["cpu_count"],
                "cpu_physical_count": psutil.cpu_count(logical=False),
                "cpu_model": cpu or _cpu_model(), "gpu_count": sum(gpus.values()),
                "gpu_model": ", ".join(f"{n} x {name}" for name, n in gpus.items()),
                "gpu_ids": _gpu_ids(self._s["gpu_ids"])}

    def service_shutdown(self, signum: int, frame: Any) -> None:
        """A signal handler that stops the tracker: signal.signal(SIGTERM, t.service_shutdown)."""
        log.warning("service_shutdown - Caught signal %d", signum)
        self.stop()

    def __enter__(self) -> EmissionsTracker:
        self.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._error = exc_type.__name__ if exc_type is not None else ""
        self.stop()


class OfflineEmissionsTracker(EmissionsTracker):
    """CodeCarbon's offline tracker. carbonmeter never looks its location up online, so it is
    the same tracker: give country_iso_code (or cloud_provider and cloud_region)."""


@dataclasses.dataclass
class _Task:
    name: str
    snap: Any  # the snapshot it began at
    load: Load | None
    data: EmissionsData | None = None  # once it has ended


_TRACKER_PARAMS = [p for p in inspect.signature(EmissionsTracker).parameters.values()
                   if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]


def track_emissions(fn: Callable[..., Any] | None = None, /, **keywords: Any) -> Any:
    """CodeCarbon's decorator: measure every call of the function and write it as
    EmissionsTracker does. `@track_emissions` or `@track_emissions(project_name=..., ...)`
    with EmissionsTracker's keywords, `offline`, and carbonmeter's `config`. The last
    call's Usage is `fn.last_result`."""
    bound = _DECORATOR.bind(fn, **keywords)  # an unknown keyword: TypeError naming it
    keywords = {k: v for k, v in bound.arguments.items() if k != "fn" and v is not UNSET}
    offline = keywords.pop("offline", False)
    if offline and not (keywords.get("country_iso_code") or keywords.get("cloud_provider")):
        raise ValueError("Needs ISO Code of the Country for Offline mode")
    cls = OfflineEmissionsTracker if offline else EmissionsTracker

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def measured(*args: Any, **kw: Any) -> Any:
            tracker = cls(**keywords)
            tracker.name = func.__name__
            tracker.start()
            try:
                return func(*args, **kw)
            except BaseException as e:
                tracker._error = type(e).__name__
                raise
            finally:
                tracker.stop()
                measured.last_result = tracker.result  # type: ignore[attr-defined]

        measured.last_result = None  # type: ignore[attr-defined]
        return measured

    return decorate(fn) if fn is not None else decorate


_DECORATOR = inspect.Signature([
    inspect.Parameter("fn", inspect.Parameter.POSITIONAL_ONLY, default=None),
    *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in _TRACKER_PARAMS),
    inspect.Parameter("offline", inspect.Parameter.KEYWORD_ONLY, default=UNSET),
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None),
])
track_emissions.__signature__ = _DECORATOR  # type: ignore[attr-defined]
