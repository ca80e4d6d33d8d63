"""deploy/Dockerfile, .dockerignore and deploy/docker-compose.yml.

No Docker engine runs here, so the image is not built. Instead: hadolint lints the Dockerfile;
the build stage's own instructions (COPY from a context filtered by .dockerignore with Docker's
matching rules, ENV, WORKDIR, RUN) are replayed into a fresh directory standing for the image,
on this machine's Python of the base image's version; the final stage's command then runs from
it as the image's user, and the HEALTHCHECK command is run against it, up and down.
docker-compose (Debian's package) validates the compose file against the Compose schema.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.shipped import DEPLOY, ROOT, venv_tool
from tests.helpers import free_port, http_get, require, wait_for

DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"


def test_dockerfile_lints_clean():
    out = subprocess.run([venv_tool("hadolint"), "--no-color", str(DOCKERFILE)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


# -- the Dockerfile, read as Docker reads it ------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = pending + line
        pending = ""
        word, _, rest = whole.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def _pattern(p: str) -> re.Pattern[str]:
    """Docker's pattern syntax: * and ? within a name, ** across directories."""
    out = ""
    i = 0
    while i < len(p):
        if p.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif p.startswith("**", i):
            out, i = out + ".*", i + 2
        elif p[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif p[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(p[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str], str]]:
    """(exclude?, pattern, cleaned) per line; Docker cleans a pattern like a path."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        cleaned = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((not include, _pattern(cleaned), cleaned))
    return rules


def excluded(rel: str, rules: list[tuple[bool, re.Pattern[str], str]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    verdict = False
    for exclude, pattern, _ in rules:
        if any(pattern.match(p) for p in prefixes):
            verdict = exclude
    return verdict


def build_context(dest: Path) -> None:
    """Copy the repository as `docker build .` would send it, .dockerignore applied."""
    rules = dockerignore_rules((ROOT / ".dockerignore").read_text())
    reinclusions = [c for exclude, _, c in rules if not exclude]
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        # walk into an excluded directory only when a "!" pattern may reach inside it
        dirnames[:] = [d for d in dirnames if not excluded(rel_dir + d, rules)
                       or any(c.startswith(rel_dir + d + "/") for c in reinclusions)]
        for f in filenames:
            rel = rel_dir + f
            if not excluded(rel, rules):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, dest / rel)


@pytest.mark.parametrize("path, out", [
    ("exporter/cli.py", False), ("tests/run", True), (".venv/bin/python", True),
    ("exporter/__pycache__/cli.cpython-311.pyc", True), ("config/default.yaml", False),
    ("config/sources/derive.py", True), ("pyproject.toml", False), (".git/HEAD", True),
])
def test_dockerignore_sends_only_what_the_build_needs(path, out):
    rules = dockerignore_rules((ROOT / ".dockerignore").read_text())
    assert excluded(path, rules) is out


class Image:
    """A directory standing for the image's file system, with the stages' ENV and WORKDIR."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env: dict[str, str] = {"PATH": os.environ["PATH"]}
        self.workdir = "/"

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def rewrite(self, text: str) -> str:
        """Absolute paths of the image, moved under the directory."""
        return re.sub(r"(?<![\w.])/(opt|src|etc)\b", lambda m: f"{self.root}/{m.group(1)}", text)

    def set_env(self, args: str) -> None:
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            self.env[key] = re.sub(r"\$(\w+)", lambda m: self.env.get(m.group(1), ""),
                                   self.rewrite(value))


def replay_build_stage(stage: list[tuple[str, str]], context: Path, image: Image) -> None:
    shim = image.root / "shim"  # `python` of the base image: this interpreter's base
    shim.mkdir()
    (shim / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    image.env["PATH"] = f"{shim}:{image.env['PATH']}"
    for word, args in stage[1:]:
        if word == "WORKDIR":
            image.workdir = args
            image.path(args).mkdir(parents=True, exist_ok=True)
        elif word == "ENV":
            image.set_env(args)
        elif word == "COPY":
            *sources, dest = shlex.split(args)
            assert not any(s.startswith("--") for s in sources), args
            target = image.path(os.path.join(image.workdir, dest))
            for src in sources:
                origin = context / src
                assert origin.exists(), f"COPY {src}: not in the build context (.dockerignore?)"
                if origin.is_dir():
                    shutil.copytree(origin, target, dirs_exist_ok=True)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target / origin.name)
        elif word == "RUN":
            out = subprocess.run(["bash", "-c", image.rewrite(args)], cwd=image.path(
                image.workdir), env=image.env, capture_output=True, text=True)
            assert out.returncode == 0, f"RUN {args}\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
        elif word not in ("LABEL", "ARG"):
            pytest.fail(f"the replay does not know {word}: teach it before using it")


def exec_form(args: str) -> list[str]:
    return json.loads(args)


@pytest.fixture(scope="module")
def image() -> Iterator[tuple[Image, dict[str, str]]]:
    """The build stage replayed; yields the image and the final stage's instructions."""
    tmp = Path(tempfile.mkdtemp(prefix="carbonmeter-image-"))
    os.chmod(tmp, 0o755)  # the image's user must reach it
    try:
        context = tmp / "context"
        build_context(context)
        build, final = stages(DOCKERFILE.read_text())
        assert build[0][1].endswith(" AS build") and final[0][0] == "FROM"
        img = Image(tmp / "image")
        img.root.mkdir()
        replay_build_stage(build, context, img)
        last: dict[str, str] = {}
        for word, args in final[1:]:
            last[word] = args
            if word == "ENV":
                img.set_env(args)
            if word == "COPY":
                assert args == "--from=build /opt/carbonmeter /opt/carbonmeter", args
        yield img, last
    finally:
        shutil.rmtree(tmp)


def test_image_runs_as_an_unprivileged_user(image):
    _, final = image
    assert final["USER"] == "65532:65532"
    assert exec_form(final["ENTRYPOINT"]) == ["carbonmeter"]
    assert exec_form(final["CMD"]) == ["serve"]


def as_image_user(img: Image, final: dict[str, str], argv: list[str],
                  env: dict[str, str] | None = None, **kw: Any) -> Any:
    uid, gid = final["USER"].split(":")
    drop = [require("setpriv"), f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    return (subprocess.Popen if kw.pop("background", False) else subprocess.run)(
        [*drop, *argv], env={**img.env, **(env or {})}, cwd="/", **kw)


def test_installed_command_serves_and_the_healthcheck_follows_it(image):
    img, final = image
    entry = exec_form(final["ENTRYPOINT"])
    out = as_image_user(img, final, [*entry, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "carbonmeter 0.1.0", out

    port = free_port()
    health = re.fullmatch(r"(?:--\S+\s+)*CMD\s+(\[.*\])", final["HEALTHCHECK"])
    assert health, final["HEALTHCHECK"]
    probe = [a.replace(":29100/", f":{port}/") for a in json.loads(health.group(1))]
    assert probe != json.loads(health.group(1)), "the healthcheck should use the default port"
    before = sorted(p for p in img.root.rglob("*"))
    proc = as_image_user(img, final, [*entry, *exec_form(final["CMD"])],
                         env={"CARBONMETER_SERVER_LISTEN": f"127.0.0.1:{port}",
                              "CARBONMETER_SAMPLER_INTERVAL_SECONDS": "0.2"},
                         background=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: b'source="ram_model"' in http_get(
            f"http://127.0.0.1:{port}/metrics")[2], what="a sample from the installed command")
        ok = as_image_user(img, final, probe, capture_output=True)
        assert ok.returncode == 0, ok.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, proc.stderr.read()
    down = as_image_user(img, final, probe, capture_output=True)
    assert down.returncode != 0
    # nothing written into the image: a read-only root file system is fine
    assert sorted(p for p in img.root.rglob("*")) == before


# -- docker compose -------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_is_valid():
    out = subprocess.run([require("docker-compose"), "-f", str(COMPOSE), "config", "-q"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_compose_mounts_exist_and_prometheus_finds_its_rules():
    services = compose()["services"]
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: {src} does not exist"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    cfg_in = next(a for a in services["prometheus"]["command"] if "--config.file=" in a)
    cfg_path = Path(cfg_in.split("=", 1)[1])
    cfg = yaml.safe_load((DEPLOY / mounts[str(cfg_path)]).read_text())
    for rule_file in cfg["rule_files"]:
        in_container = cfg_path.parent / rule_file
        (mount,) = [m for m in mounts if in_container.is_relative_to(m)]
        assert (DEPLOY / mounts[mount] / in_container.relative_to(mount)).is_file()
    (job,) = cfg["scrape_configs"]
    host = job["static_configs"][0]["targets"][0].split(":")[0]
    assert host in services


def test_compose_environment_is_a_valid_carbonmeter_configuration(tmp_path):
    env = {k: str(v) for k, v in compose()["services"]["carbonmeter"]["environment"].items()}
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    out = subprocess.run([sys.executable, "-m", "carbonmeter", "config", "check", str(empty)],
                         env={**os.environ, **env}, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "sysfs: /host/sys" in out.stdout and "procfs: /host/proc" in out.stdout


def test_collector_receives_otlp_where_carbonmeter_sends_it():
    services = compose()["services"]
    env = services["carbonmeter"]["environment"]
    collector = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    m = re.fullmatch(r"http://([\w-]+):(\d+)", env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert m and m.group(1) in services
    protocol = env["OTEL_EXPORTER_OTLP_PROTOCOL"].split("/")[0]
    receiver = collector["receivers"]["otlp"]["protocols"][protocol]
    assert receiver["endpoint"].endswith(f":{m.group(2)}")
    for pipeline in collector["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for name in pipeline.get(kind, []):
                assert name in collector[kind], f"{kind} {name} is used but not defined"
