"""What `pip install carbonmeter` puts on a machine: one import package, `carbonmeter`.

The wheel is built from this checkout as pip builds it (`pip wheel .`, build isolation and
all) and installed into a fresh virtual environment. Its dependencies are not installed
again: PYTHONPATH lends it the test environment's site-packages, which holds them but no
`carbonmeter` (the checkout is installed there in editable mode, through a .pth file that
PYTHONPATH does not run). So every import below comes from the wheel or fails.
"""

from __future__ import annotations

import email
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"exporter": "carbonmeter", "probes": "carbonmeter.probes",
           "config": "carbonmeter.bundled"}


def test_every_package_of_the_tree_is_listed_in_pyproject():
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {v: k for k, v in setup["package-dir"].items()} == FOLDERS
    found = {".".join((FOLDERS[top], *p.parent.relative_to(ROOT / top).parts))
             for top in ("exporter", "probes") for p in (ROOT / top).rglob("__init__.py")}
    assert found | {"carbonmeter.bundled"} == set(setup["packages"])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            str(out), str(ROOT)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    (whl,) = out.glob("carbonmeter-*.whl")
    return whl


@pytest.fixture(scope="module")
def fresh(wheel, tmp_path_factory) -> Path:
    """A new virtual environment with only the wheel installed; its python."""
    env = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                           "--no-deps", "--no-index", "-q", str(wheel)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return python


def run_in(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    deps = sysconfig.get_path("purelib")  # the test environment's: dependencies only
    return subprocess.run([python, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, cwd=cwd, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": deps})


def test_the_wheel_holds_one_package_with_its_licence_and_type_marker(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = email.message_from_bytes(z.read(next(n for n in names
                                                      if n.endswith(".dist-info/METADATA"))))
        license_file = z.read(next(n for n in names if n.endswith("/licenses/LICENSE")))
    tops = {n.split("/")[0] for n in names}
    assert tops == {"carbonmeter", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "carbonmeter/py.typed" in names
    for data in ("default.yaml", "regions.csv", "cpu_tdp.csv"):
        assert f"carbonmeter/bundled/{data}" in names
    assert not any(n.startswith("carbonmeter/bundled/sources/") for n in names)
    assert meta["License-Expression"] == "Apache-2.0"
    assert b"Apache License" in license_file and b"Version 2.0, January 2004" in license_file
    classifiers = meta.get_all("Classifier")
    assert "Typing :: Typed" in classifiers and "Topic :: System :: Monitoring" in classifiers
    assert "Requires-Dist: opentelemetry-exporter-otlp-proto-grpc>=1.25; extra == \"grpc\"" \
        in z_text(wheel, "METADATA")


def z_text(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as z:
        return z.read(next(n for n in z.namelist() if n.endswith(f".dist-info/{name}"))).decode()


def test_installed_it_imports_as_carbonmeter_and_nothing_else(fresh, tmp_path):
    out = run_in(fresh, """
        import importlib.util, json, sys
        import carbonmeter
        from carbonmeter import track, track_emissions, EmissionsTracker, OfflineEmissionsTracker
        from carbonmeter.carbon.regions import regions
        from carbonmeter.config import load
        from importlib import resources
        from carbonmeter.probes.cpu_names import lookup_tdp, parse_tdp_table
        tdp_table = parse_tdp_table(
            resources.files("carbonmeter.bundled").joinpath("cpu_tdp.csv").read_text())
        print(json.dumps({
            "where": carbonmeter.__file__,
            "old": [m for m in ("exporter", "probes", "config")
                    if importlib.util.find_spec(m) is not None],
            "regions": len(regions()),
            "interval": load(env={}).sampler.interval_seconds,
            "tdp": lookup_tdp("AMD EPYC 7763 64-Core Processor", tdp_table)[0],
            "version": carbonmeter.__version__,
        }))
        """, tmp_path)
    assert out.returncode == 0, out.stderr
    import json

    got = json.loads(out.stdout)
    assert "site-packages/carbonmeter/" in got["where"], got["where"]
    assert got["old"] == []
    assert got["regions"] > 400 and got["interval"] == 15.0 and got["tdp"] == 280
    assert got["version"] == "0.1.0"


def test_a_users_own_exporter_and_probes_modules_do_not_shadow_it(fresh, tmp_path):
    """PyPI has distributions named exporter and probes; a script beside its own
    exporter.py or probes/ package still imports carbonmeter."""
    (tmp_path / "exporter.py").write_text("MINE = True\n")
    (tmp_path / "probes").mkdir()
    (tmp_path / "probes" / "__init__.py").write_text("MINE = True\n")
    (tmp_path / "config.py").write_text("MINE = True\n")
    out = run_in(fresh, """
        import sys
        sys.path.insert(0, "")
        import exporter, probes, config
        from carbonmeter import track
        from carbonmeter.probes.base import Device
        print(exporter.MINE, probes.MINE, config.MINE, callable(track), Device.__module__)
        """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True", "True", "carbonmeter.probes.base"]


def test_python_dash_m_and_the_console_script_run(fresh, wheel, tmp_path):
    for argv in ([str(fresh), "-m", "carbonmeter", "--version"],
                 [str(fresh.parent / "carbonmeter"), "--version"]):
        out = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path,
                             env={"PATH": "/usr/bin:/bin",
                                  "PYTHONPATH": sysconfig.get_path("purelib")})
        assert out.returncode == 0 and out.stdout.strip() == "carbonmeter 0.1.0", out.stderr


def test_grpc_without_its_extra_is_one_line_that_names_the_extra(tmp_path):
    cfg = tmp_path / "otlp.yaml"
    cfg.write_text("otlp:\n  enabled: true\n  protocol: grpc\n")
    code = ("import sys; sys.modules['opentelemetry.exporter.otlp.proto.grpc'] = None\n"
            "from carbonmeter.cli import main\n"
            f"sys.exit(main(['config', 'check', {str(cfg)!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2, out
    assert out.stderr.count("\n") == 1
    assert "pip install 'carbonmeter[grpc]'" in out.stderr and str(cfg) in out.stderr
