"""The drop-in, proven against CodeCarbon itself: the same scripts under both, compared.

CodeCarbon 3.3.2 is installed from PyPI into a virtual environment of its own
(.venv-codecarbon, made by tests/run). Each script in codecarbon_scripts/ runs once under
CodeCarbon as written and once under carbonmeter with only its `codecarbon` imports changed.

Both run in the same sealed place, one fresh per run (`unshare --net --mount`, as root):
- a network namespace that holds only a loopback interface, down, so nothing can leave the
  machine (the session checks that an outside address is unreachable there, and CodeCarbon's
  online tracker says it could not reach its geolocation service);
- a mount namespace whose /proc/stat is a frozen copy of the real one, so both tools read the
  same CPU load, none, whatever else runs on the machine: their CPU estimates then sit at a
  known point of their load curves (CodeCarbon: 10 % of the forced power, carbonmeter: the
  idle share of TDP of this machine's CPU generation);
- a home directory and working directory of its own, and no CODECARBON_* or CARBONMETER_*
  variables but those a scenario sets.
"""

from __future__ import annotations

import csv
import errno
import inspect
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from carbonmeter.probes.base import Paths
from carbonmeter.probes.cpu_model import estimate_cpu_watts
from carbonmeter.probes.machine import detect

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).parent / "codecarbon_scripts"
CODECARBON_PYTHON = ROOT / ".venv-codecarbon" / "bin" / "python"
VERSION = "3.3.2"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
TOOLS = ("codecarbon", "carbonmeter")
# Columns about where the machine is: CodeCarbon's online tracker guesses them from the
# network (and, with none, falls back to Canada); carbonmeter never looks them up.
LOCATION = ("country_name", "country_iso_code", "region", "longitude", "latitude")


@dataclass
class Scenario:
    script: str
    home: dict[str, str] = field(default_factory=dict)  # files in $HOME
    cwd: dict[str, str] = field(default_factory=dict)  # files in the working directory
    env: dict[str, str] = field(default_factory=dict)


SCENARIOS = {
    "decorated": Scenario("decorated"),
    "context_manager": Scenario("context_manager"),
    "task_loop": Scenario("task_loop"),
    "threads": Scenario("threads"),
    # a PUE and a WUE, in a directory whose emissions.csv has another header
    "pue_wue": Scenario(
        "pue_wue", cwd={"emissions.csv": "timestamp,emissions\n2024-01-01T00:00:00,0.5\n"}),
    "to_logger": Scenario("to_logger"),
    "forced": Scenario("forced"),
    "configured": Scenario(
        "configured",
        home={".codecarbon.config": "[codecarbon]\nproject_name = from-home\n"
                                    "measure_power_secs = 1\noutput_file = from-home.csv\n"
                                    "pue = 1.25\n"},
        cwd={".codecarbon.config": "[codecarbon]\nproject_name = from-cwd\n"},
        env={"CODECARBON_EXPERIMENT_ID": "from-env", "CODECARBON_OUTPUT_FILE": "configured.csv"}),
}


@dataclass
class Run:
    tool: str
    dir: Path
    returncode: int
    stdout: str
    stderr: str

    def files(self) -> set[str]:
        """What the script left in its directory, UUIDs replaced (they differ per run)."""
        return {UUID.sub("<uuid>", p.name) for p in self.dir.iterdir()
                if p.name not in ("script.py", ".codecarbon.config")}

    def file(self, pattern: str) -> Path:
        found = [p for p in self.dir.iterdir() if UUID.sub("<uuid>", p.name) == pattern]
        assert len(found) == 1, (pattern, sorted(self.files()))
        return found[0]

    def rows(self, pattern: str = "emissions.csv") -> list[dict[str, str]]:
        with open(self.file(pattern), newline="") as f:
            return list(csv.DictReader(f))

    def header(self, pattern: str = "emissions.csv") -> str:
        return self.file(pattern).read_text().split("\n", 1)[0]


def codecarbon_python() -> Path:
    check = ("import importlib.metadata as m; print(m.version('codecarbon'))")
    try:
        out = subprocess.run([str(CODECARBON_PYTHON), "-c", check], capture_output=True,
                             text=True, timeout=60).stdout.strip()
    except OSError:
        out = ""
    if out != VERSION:
        raise AssertionError(f"CodeCarbon {VERSION} is not installed in {CODECARBON_PYTHON}: run "
                             "the test command from README.md (tests/run), which installs it")
    return CODECARBON_PYTHON


def for_carbonmeter(source: str) -> str:
    """The script with its CodeCarbon imports changed, and nothing else."""
    source = re.sub(r"^from codecarbon\.output import", "from carbonmeter import", source,
                    flags=re.M)
    return re.sub(r"^from codecarbon import", "from carbonmeter import", source, flags=re.M)


def sealed(command: list[str], stat: Path) -> list[str]:
    """`command` with no network and a frozen /proc/stat (see the module's docstring)."""
    inner = 'mount --bind "$0" /proc/stat && exec "$@"'
    return ["unshare", "--net", "--mount", "sh", "-c", inner, str(stat), *command]


def clean_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("CODECARBON_", "CARBONMETER_", "CUDA_VISIBLE"))}
    return {**env, "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1", **extra}


def run_script(tool: str, scenario: Scenario, where: Path, stat: Path,
               source: str | None = None) -> Run:
    python = str(CODECARBON_PYTHON) if tool == "codecarbon" else sys.executable
    home = where.parent / f"{where.name}-home"
    where.mkdir(parents=True, exist_ok=True)
    home.mkdir(exist_ok=True)
    for name, text in scenario.home.items():
        (home / name).write_text(text)
    for name, text in scenario.cwd.items():
        (where / name).write_text(text)
    text = source or (SCRIPTS / f"{scenario.script}.py").read_text()
    (where / "script.py").write_text(text if tool == "codecarbon" else for_carbonmeter(text))
    out = subprocess.run(sealed([python, "script.py"], stat), cwd=where,
                         env=clean_env(home, scenario.env), capture_output=True, text=True,
                         timeout=120)
    return Run(tool, where, out.returncode, out.stdout, out.stderr)


@pytest.fixture(scope="module")
def frozen_stat(tmp_path_factory) -> Path:
    stat = tmp_path_factory.mktemp("proc") / "stat"
    stat.write_bytes(Path("/proc/stat").read_bytes())
    return stat


@pytest.fixture(scope="module")
def sealed_ok(frozen_stat) -> Path:
    """The sealed place works here and really has no network."""
    codecarbon_python()
    probe = ("import errno, socket\n"
             "print([n for _, n in socket.if_nameindex()])\n"
             "s = socket.socket(); s.settimeout(3)\n"
             "try:\n    s.connect(('192.0.2.1', 80)); print('connected')\n"
             "except OSError as e:\n    print(e.errno)\n"
             "print(open('/proc/stat').read() == open(__import__('sys').argv[1]).read())\n")
    out = subprocess.run(sealed([sys.executable, "-c", probe, str(frozen_stat)], frozen_stat),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, ("the differential tests run each script in its own network "
                                 "and mount namespaces (unshare, as root): " + out.stderr)
    interfaces, result, frozen = out.stdout.split("\n")[:3]
    assert interfaces == "['lo']" and result == str(errno.ENETUNREACH), out.stdout
    assert frozen == "True"
    return frozen_stat


@pytest.fixture(scope="module")
def runs(sealed_ok, tmp_path_factory) -> dict[str, dict[str, Run]]:
    """Every scenario under both tools, four at a time (they mostly wait)."""
    base = tmp_path_factory.mktemp("scenarios")
    jobs = [(name, tool) for name in SCENARIOS for tool in TOOLS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = pool.map(lambda job: run_script(job[1], SCENARIOS[job[0]],
                                               base / f"{job[0]}-{job[1]}", sealed_ok), jobs)
        results = list(done)
    out: dict[str, dict[str, Run]] = {}
    for (name, tool), result in zip(jobs, results, strict=True):
        out.setdefault(name, {})[tool] = result
    return out


def kind(value: str) -> str:
    """What a CSV field holds: nothing, a number, or text."""
    if value == "":
        return "empty"
    try:
        float(value)
    except ValueError:
        return "text"
    return "number"


# -- the scripts run, and leave the same files -----------------------------------------------


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_script_exits_0_and_leaves_the_same_files(runs, name):
    cc, cm = runs[name]["codecarbon"], runs[name]["carbonmeter"]
    assert cc.returncode == 0, cc.stderr[-3000:]
    assert cm.returncode == 0, cm.stderr[-3000:]
    assert cm.files() == cc.files()
    assert "Traceback" not in cm.stderr


def test_csv_headers_are_codecarbons_byte_for_byte_then_carbonmeters(runs):
    from carbonmeter.sinks.emissions_log import CODECARBON_COLUMNS, OWN_COLUMNS

    for name, pair in runs.items():
        for pattern in sorted(f for f in pair["codecarbon"].files() if f.endswith(".csv")):
            theirs, ours = pair["codecarbon"].header(pattern), pair["carbonmeter"].header(pattern)
            assert ours.startswith(theirs + ","), (name, pattern)
            rest = ours[len(theirs) + 1:].split(",")
            assert rest == [c for c in OWN_COLUMNS if c not in theirs.split(",")], (name, pattern)
    assert runs["decorated"]["codecarbon"].header().split(",") == list(CODECARBON_COLUMNS)


def test_rows_hold_the_same_kinds_of_values_in_the_same_units(runs):
    from carbonmeter.sinks.emissions_log import CODECARBON_COLUMNS

    same = ("project_name", "experiment_id", "codecarbon_version", "os", "python_version",
            "cpu_count", "gpu_count", "gpu_model", "tracking_mode", "cloud_provider",
            "cloud_region", "on_cloud", "pue", "wue")
    for name, pair in runs.items():
        main = "configured.csv" if name == "configured" else "emissions.csv"
        cc_rows, cm_rows = pair["codecarbon"].rows(main), pair["carbonmeter"].rows(main)
        assert len(cm_rows) == len(cc_rows) > 0, name
        for cc, cm in zip(cc_rows, cm_rows, strict=True):
            for col in CODECARBON_COLUMNS:
                if name == "context_manager" and col in LOCATION:
                    continue  # CodeCarbon guessed a place (Canada) without a network
                assert kind(cm[col]) == kind(cc[col]), (name, col, cc[col], cm[col])
            for col in same:
                assert kind(cm[col]) == "number" and float(cm[col]) == float(cc[col]) \
                    if kind(cc[col]) == "number" else cm[col] == cc[col], (name, col)
            if name != "context_manager":
                for col in ("country_name", "country_iso_code", "region"):
                    assert cm[col] == cc[col], (name, col)
            assert float(cm["ram_total_size"]) == pytest.approx(float(cc["ram_total_size"]),
                                                                rel=0.01)
            for r in (cc, cm):  # units: W x s = kWh, kg/s, L = kWh x L/kWh, GB <= GB, %
                assert TIMESTAMP.fullmatch(r["timestamp"]) and UUID.fullmatch(r["run_id"])
                duration = float(r["duration"])
                parts = 0.0
                for part in ("cpu", "gpu", "ram"):
                    kwh = float(r[f"{part}_energy"])
                    parts += kwh
                    if r is cc and name == "task_loop":
                        continue  # CodeCarbon's duration: since the last task began only
                    # W x s = kWh: exact for carbonmeter's mean power. CodeCarbon's power is
                    # the mean of its samples, and a periodic measure that runs while stop()
                    # measures counts its interval twice: near enough to tell W from kW
                    from_power = float(r[f"{part}_power"]) * duration / 3.6e6
                    if r is cm:
                        assert from_power == pytest.approx(kwh, rel=0.05, abs=1e-9), (name, r)
                    else:
                        assert kwh / 3 - 1e-9 <= from_power <= kwh * 3 + 1e-9, (name, part, r)
                assert float(r["energy_consumed"]) == pytest.approx(parts, rel=1e-9)
                assert float(r["emissions_rate"]) == pytest.approx(
                    float(r["emissions"]) / duration, rel=1e-6)
                assert float(r["water_consumed"]) == pytest.approx(
                    float(r["energy_consumed"]) * float(r["wue"]), rel=1e-9, abs=1e-15)
                assert 0 <= float(r["ram_used_gb"]) <= float(r["ram_total_size"])
                assert 0 <= float(r["cpu_utilization_percent"]) <= 100


def test_a_logger_output_gets_the_same_records(runs):
    pair = runs["to_logger"]
    records = {tool: [json.loads(line) for line in
                      pair[tool].file("emissions.log").read_text().splitlines()]
               for tool in TOOLS}
    assert len(records["carbonmeter"]) == len(records["codecarbon"]) == 1
    cc, cm = records["codecarbon"][0], records["carbonmeter"][0]
    assert list(cm) == list(cc)  # the same keys in the same order
    for k in cc:
        assert type(cm[k]) is type(cc[k]) or {type(cm[k]), type(cc[k])} <= {int, float}, k
    assert cm["project_name"] == cc["project_name"] == "logged"


def test_a_task_name_used_again_gets_codecarbons_suffix(runs):
    for tool in TOOLS:
        tasks = runs["task_loop"][tool].rows("emissions_base_<uuid>.csv")
        names = [t["task_name"] for t in tasks]
        assert names[0] == "step" and len(names) == 3, (tool, names)
        assert all(re.fullmatch(f"step_{UUID.pattern}", n) for n in names[1:]), (tool, names)
        assert all(t["country_iso_code"] == "CAN" and t["region"] == "quebec" for t in tasks)
        run = runs["task_loop"][tool].rows()[0]
        assert {t["run_id"] for t in tasks} == {run["run_id"]}
        task_kwh = sum(float(t["energy_consumed"]) for t in tasks)
        # CodeCarbon's run row holds the tasks' energy; carbonmeter's also the time between
        assert float(run["energy_consumed"]) >= task_kwh * 0.99


def test_configuration_files_and_environment_with_codecarbons_precedence(runs):
    for tool in TOOLS:
        run = runs["configured"][tool]
        assert "configured.csv" in run.files() and "from-home.csv" not in run.files()
        (r,) = run.rows("configured.csv")
        assert r["project_name"] == "from-cwd"  # ./.codecarbon.config over ~/.codecarbon.config
        assert r["experiment_id"] == "from-env"  # CODECARBON_* over both files
        assert float(r["pue"]) == 1.25  # only in ~/.codecarbon.config


def test_a_file_with_another_header_is_backed_up_as_codecarbon_does(runs):
    for tool in TOOLS:
        run = runs["pue_wue"][tool]
        assert run.file("emissions.csv.bak").read_text() == SCENARIOS["pue_wue"].cwd[
            "emissions.csv"]
        assert len(run.rows()) == 2  # a new file: the flush and the stop


def test_without_a_network_codecarbon_says_so_and_carbonmeter_does_not_try(runs):
    cc, cm = runs["context_manager"]["codecarbon"], runs["context_manager"]["carbonmeter"]
    assert "Unable to access geographical location" in cc.stderr  # it tried, and was stopped
    (r,) = cm.rows()
    assert r["country_iso_code"] == "" and json.loads(r["devices"])  # no place guessed
    assert float(r["emissions"]) / float(r["energy_consumed"]) == pytest.approx(0.475)


# -- the same inputs give the same arithmetic -------------------------------------------------


def test_forced_power_intensity_pue_and_wue_give_the_same_arithmetic(runs):
    """force_cpu_power=40, force_ram_power=20, 250 g/kWh, PUE 1.2, WUE 1.5 L/kWh, 2 s.

    measure_power_secs=60 keeps CodeCarbon's periodic measure from running at all: its
    stop() does not wait for one that is running, and both then count the same interval.
    Each tool times the 2 s itself (a few per cent apart under load), so energies are
    compared per second of each tool's own duration. RAM is forced to a constant in both, so
    it agrees to 2 %. The forced CPU power is a TDP in both, scaled by each tool's load
    curve at the frozen load of 0: CodeCarbon's 0.1 + 0.9 load³ gives 10 %, carbonmeter's
    share of TDP its generation drew (README, "Coming from CodeCarbon"), exactly that.
    Emissions, water and the emissions rate follow from the energy by the same arithmetic.
    """
    (cc,), (cm,) = runs["forced"]["codecarbon"].rows(), runs["forced"]["carbonmeter"].rows()
    per_s = {}
    for tool, r in (("cc", cc), ("cm", cm)):
        r = {"tool": tool, **r}  # for the messages
        seconds = float(r["duration"])
        assert 2.0 <= seconds < 4.0, r  # the sleep, and what starting and stopping took
        v = per_s[tool] = {k: float(r[k]) * 3.6e6 / seconds for k in
                           ("cpu_energy", "gpu_energy", "ram_energy", "energy_consumed")}
        assert v["ram_energy"] == pytest.approx(20 * 1.2, rel=0.02), r  # W, PUE applied
        assert float(r["ram_power"]) == pytest.approx(20 * 1.2, rel=0.02), r
        assert v["gpu_energy"] == 0.0, r
        kwh = float(r["energy_consumed"])
        assert float(r["emissions"]) == pytest.approx(kwh * 250 / 1000, rel=0.02), r
        assert float(r["water_consumed"]) == pytest.approx(kwh * 1.5, rel=0.02), r
        assert float(r["emissions_rate"]) == pytest.approx(float(r["emissions"]) / seconds,
                                                           rel=0.02), r
        assert r["pue"] == "1.2" and r["wue"] == "1.5" and r["country_name"] == "", r
    assert per_s["cc"]["cpu_energy"] == pytest.approx(40 * 0.10 * 1.2, rel=0.02), cc
    generation = detect(Paths()).generation  # this machine's: the tracker runs here
    assert per_s["cm"]["cpu_energy"] == pytest.approx(
        estimate_cpu_watts(40, 0.0, generation=generation) * 1.2, rel=0.02), cm
    # CPU aside, the totals agree: the same sums of the same inputs
    rest = {t: v["energy_consumed"] - v["cpu_energy"] for t, v in per_s.items()}
    assert rest["cm"] == pytest.approx(rest["cc"], rel=0.02)


# -- the interface ---------------------------------------------------------------------------


SIGNATURES = """
import dataclasses, inspect, json
import codecarbon
from codecarbon.output_methods.emissions_data import EmissionsData
def params(f):
    return [n for n, p in inspect.signature(f).parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "self"]
data = EmissionsData(**{f.name: None for f in dataclasses.fields(EmissionsData)})
print(json.dumps({
    "EmissionsTracker": params(codecarbon.EmissionsTracker.__init__),
    "OfflineEmissionsTracker": params(codecarbon.OfflineEmissionsTracker.__init__),
    "track_emissions": params(codecarbon.track_emissions),
    "EmissionsData": sorted(n for n in dir(data) if not n.startswith("_")),
    "public": sorted(codecarbon.__all__),
    "methods": sorted(n for n in dir(codecarbon.EmissionsTracker) if not n.startswith("_")),
}))
"""

# A value each keyword may take, to call carbonmeter's tracker with it.
SAMPLES = {
    "project_name": "p", "measure_power_secs": 2, "api_call_interval": 4,
    "api_endpoint": "https://api.example.com", "api_key": "k", "output_dir": ".",
    "output_file": "e.csv", "output_methods": ["csv"], "save_to_file": False,
    "save_to_api": True, "save_to_logger": True, "logging_logger": logging.getLogger("x"),
    "save_to_prometheus": True, "save_to_logfire": True, "prometheus_url": "localhost:9",
    "output_handlers": [], "gpu_ids": [0], "emissions_endpoint": "http://localhost:9",
    "experiment_id": "e", "experiment_name": "n", "electricitymaps_api_token": "t",
    "co2_signal_api_token": "t", "tracking_mode": "process", "log_level": "warning",
    "on_csv_write": "update", "logger_preamble": "x", "force_cpu_power": 10,
    "force_ram_power": 5, "pue": 1.1, "wue": 1.2, "force_carbon_intensity_g_co2e_kwh": 90,
    "force_mode_cpu_load": True, "allow_multiple_runs": True, "rapl_include_dram": True,
    "rapl_prefer_psys": True, "metadata": {"a": 1}, "country_iso_code": "FRA",
    "region": "quebec", "cloud_provider": "gcp", "cloud_region": "europe-west9",
    "country_2letter_iso_code": "FR", "offline": False,
}


@pytest.fixture(scope="module")
def codecarbon_interface() -> dict[str, list[str]]:
    out = subprocess.run([str(codecarbon_python()), "-c", SIGNATURES], capture_output=True,
                         text=True, timeout=120, env=clean_env(Path("/nonexistent"), {}))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def log_level_kept():
    """log_level= sets carbonmeter's logger level: put it back after the test."""
    logger = logging.getLogger("carbonmeter")
    level = logger.level
    yield
    logger.setLevel(level)


def test_every_keyword_of_codecarbons_trackers_and_decorator_is_accepted(
        codecarbon_interface, tmp_path, monkeypatch, caplog, log_level_kept):
    import carbonmeter
    from carbonmeter.measure.codecarbon import NO_MEANING

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for public in codecarbon_interface["public"]:
        assert hasattr(carbonmeter, public), public
    for method in codecarbon_interface["methods"]:
        assert callable(getattr(carbonmeter.EmissionsTracker, method)), method
    for cls in ("EmissionsTracker", "OfflineEmissionsTracker"):
        ours = inspect.signature(getattr(carbonmeter, cls)).parameters
        for name in codecarbon_interface[cls]:
            assert name in ours, (cls, name)  # a parameter of its own, not swallowed
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="carbonmeter"):
                getattr(carbonmeter, cls)(**{name: SAMPLES[name]})
            if name in NO_MEANING:  # one line naming it, and why
                assert [r for r in caplog.records if r.getMessage().startswith(f"{name}: ")], name
    decorator = inspect.signature(carbonmeter.track_emissions).parameters
    for name in codecarbon_interface["track_emissions"]:
        assert name in decorator, name
        if name != "fn":
            assert carbonmeter.track_emissions(**{name: SAMPLES[name]})(lambda: 7)() == 7, name
    for f in (carbonmeter.EmissionsTracker, carbonmeter.OfflineEmissionsTracker,
              carbonmeter.track_emissions):
        with pytest.raises(TypeError, match="'measure_power_sec'"):
            f(measure_power_sec=5)


def test_every_public_attribute_of_codecarbons_emissions_data_exists_on_ours(
        codecarbon_interface, tmp_path):
    from carbonmeter import OfflineEmissionsTracker

    tracker = OfflineEmissionsTracker(country_iso_code="FRA", save_to_file=False,
                                      output_dir=str(tmp_path))
    tracker.start()
    tracker.stop()
    data = tracker.final_emissions_data
    for name in codecarbon_interface["EmissionsData"]:
        assert hasattr(data, name), name
    assert data.usage is tracker.result and math.isfinite(data.emissions)


# -- history continues in one file ------------------------------------------------------------


def test_appending_to_codecarbons_emissions_csv_continues_it(runs, sealed_ok, tmp_path):
    """carbonmeter adds its rows to a CodeCarbon emissions.csv in CodeCarbon's own columns,
    and CodeCarbon then goes on appending to the same file: one history, no file aside."""
    where = tmp_path / "shared"
    where.mkdir()
    theirs = runs["decorated"]["codecarbon"].file("emissions.csv")
    shutil.copy(theirs, where / "emissions.csv")
    header = theirs.read_text().split("\n", 1)[0]
    for tool in ("carbonmeter", "codecarbon"):
        run = run_script(tool, SCENARIOS["decorated"], where, sealed_ok)
        assert run.returncode == 0, run.stderr[-3000:]
        (where / "script.py").unlink()
    assert sorted(p.name for p in where.iterdir()) == ["emissions.csv"]
    text = (where / "emissions.csv").read_text()
    assert text.split("\n", 1)[0] == header
    with open(where / "emissions.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 4 and all(len(r) == len(header.split(",")) for r in rows)
    assert len({r[2] for r in rows[1:]}) == 3  # three runs, three run_ids
