"""Machine detection on fixture hosts, and the estimate each case gets from the bundled table.

Each fixture is a fake /proc and /sys with the kernel's layout: /proc/cpuinfo as x86 Linux
prints it (one block per logical CPU; `flags` carries `hypervisor` in a guest, from CPUID leaf
1 ECX bit 31), the DMI strings of /sys/class/dmi/id as the named hypervisors and clouds set them
(QEMU: sys_vendor "QEMU"; EC2 Nitro: "Amazon EC2" with the instance type as product_name;
Azure: Microsoft's "Virtual Machine" with its fixed chassis asset tag), /proc/self/cgroup's
"hierarchy:controllers:path" lines, and cgroup v2 (cpu.max "quota period" or "max period") and
v1 (cpu.cfs_quota_us -1 for none) files. The expected watts are computed here from the rows of
config/power_model.csv and config/power_params.csv, not by the model's code.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from carbonmeter.probes.base import Paths
from carbonmeter.probes.cpu_model import estimate_machine, machine_pricing
from carbonmeter.probes.machine import detect, lookup_instance
from tests.fixtures.tables import CONFIG, rows

ROWS = {r["generation"]: r for r in rows("power_model.csv")}
PARAMS = {r["name"]: float(r["value"]) for r in rows("power_params.csv") if r["name"] != "source"}


def fig(generation: str, column: str) -> float:
    return float(ROWS[generation][column])


def host(tmp_path: Path, *, name: str, vendor: str = "GenuineIntel", family: int = 6,
         model: int = 85, threads: int = 2, sockets: int = 1, guest: bool = True,
         mem_kb: int = 8 * 2**20, dmi: dict[str, str] | None = None,
         cgroup: str = "0::/\n") -> Paths:
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    (proc / "self").mkdir(parents=True)
    flags = "fpu vme de pse tsc msr pae mce cx8 apic sep" + (" hypervisor" if guest else "")
    blocks = []
    for n in range(threads):
        blocks.append(
            f"processor\t: {n}\nvendor_id\t: {vendor}\ncpu family\t: {family}\n"
            f"model\t\t: {model}\nmodel name\t: {name}\nstepping\t: 7\n"
            f"physical id\t: {n * sockets // threads}\nsiblings\t: {threads // sockets}\n"
            f"flags\t\t: {flags}\n\n")
    (proc / "cpuinfo").write_text("".join(blocks))
    (proc / "meminfo").write_text(f"MemTotal:       {mem_kb} kB\nMemFree:        1024 kB\n")
    (proc / "self" / "cgroup").write_text(cgroup)
    (sys / "class" / "dmi" / "id").mkdir(parents=True)
    for key, value in (dmi or {}).items():
        (sys / "class" / "dmi" / "id" / key).write_text(value + "\n")
    return Paths(sysfs=sys, procfs=proc)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_kvm_guest_with_a_hidden_model_name(tmp_path: Path) -> None:
    paths = host(tmp_path, name="AMD EPYC", vendor="AuthenticAMD", family=25, model=1,
                 threads=4, mem_kb=16 * 2**20,
                 dmi={"sys_vendor": "QEMU", "product_name": "Standard PC (Q35 + ICH9, 2009)"})
    m = detect(paths)
    assert m.virtual and m.hypervisor.name == "KVM (QEMU)"
    assert "cpuinfo flag 'hypervisor'" in m.hypervisor.evidence
    assert m.generation == "amd-epyc-gen3" and "cpu family 25, model 1" in m.generation_source
    est = estimate_machine(m, 1.0)
    assert est.case == "guest"
    assert est.parts["cpu"] == pytest.approx(4 * fig("amd-epyc-gen3", "thread_full_w"))
    assert est.parts["platform"] == pytest.approx(
        4 * fig("amd-epyc-gen3", "platform_thread_full_w"))
    assert est.parts["ram"] == pytest.approx(16 * PARAMS["ram_w_per_gb"])
    assert est.error == (PARAMS["error_guest_idle"], PARAMS["error_guest_full"])


def test_ec2_instance_from_dmi(tmp_path: Path) -> None:
    # Nitro puts the instance type in product_name; the name here is the real one.
    paths = host(tmp_path, name="Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz", threads=2,
                 dmi={"sys_vendor": "Amazon EC2", "product_name": "m5.large",
                      "bios_vendor": "Amazon EC2"})
    m = detect(paths)
    assert m.virtual and m.hypervisor.cloud == "aws" and m.instance_type == "m5.large"
    assert (m.instance.vcpus, m.instance.memory_gb) == (2, 8.0)
    assert m.generation == "intel-skylake-server"
    est = estimate_machine(m, 0.0)
    assert est.case == "guest" and est.tdp_watts is None  # never the 240 W of an 8175M
    assert est.parts["cpu"] == pytest.approx(2 * fig("intel-skylake-server", "thread_idle_w"))


def test_guest_with_a_generic_name_takes_the_instance_generation(tmp_path: Path) -> None:
    # Some hypervisors pass no family/model worth reading; the instance list still knows.
    paths = host(tmp_path, name="Intel Xeon Processor", family=15, model=6, threads=4,
                 dmi={"sys_vendor": "Google", "product_name": "Google Compute Engine"})
    m = detect(paths, instance_type="n2-standard-4")
    assert m.hypervisor.cloud == "gcp" and m.instance.cpu == "Intel Xeon Platinum 8373C"
    assert m.generation == "intel-icelake" and "n2-standard-4" in m.generation_source
    assert estimate_machine(m, 1.0).parts["cpu"] == pytest.approx(
        4 * fig("intel-icelake", "thread_full_w"))


def test_container_under_cgroup_v2_cpu_max(tmp_path: Path) -> None:
    rel = "kubepods.slice/kubepods-burstable.slice/cri-containerd-" + "a" * 64 + ".scope"
    paths = host(tmp_path, name="AMD EPYC 7763 64-Core Processor", vendor="AuthenticAMD",
                 family=25, model=1, threads=16, guest=False, mem_kb=64 * 2**20,
                 cgroup=f"0::/{rel}\n")
    fs = paths.sysfs / "fs" / "cgroup"
    write(fs / "cgroup.controllers", "cpuset cpu io memory pids\n")
    write(fs / "kubepods.slice" / "cpu.max", "max 100000\n")
    write(fs / rel / "cpu.max", "50000 100000\n")
    write(fs / rel / "memory.max", f"{2 * 2**30}\n")
    write(fs / rel / "cpuset.cpus.effective", "0-15\n")
    write(fs / rel / "cpu.stat", "usage_usec 1500000\nuser_usec 1000000\n")
    m = detect(paths)
    assert not m.virtual and m.cpu_limit == 0.5 and m.limits.memory_gb == 2.0
    assert m.limits.cpu_seconds() == 1.5
    p = machine_pricing(m)
    assert p.share and p.threads == 0.5 and p.memory_gb == 2.0
    est = estimate_machine(m, 1.0)
    assert est.case == "guest"
    assert est.parts["cpu"] == pytest.approx(0.5 * fig("amd-epyc-gen3", "thread_full_w"))
    assert est.parts["ram"] == pytest.approx(2 * PARAMS["ram_w_per_gb"])


def test_container_under_cgroup_v1_hybrid_quota_and_cpuset(tmp_path: Path) -> None:
    # The hybrid layout: v1 controllers, and an empty cgroup2 at unified. Inside a container
    # /proc/self/cgroup shows the host's path and the mount is the container's own cgroup.
    cid = "b" * 64
    paths = host(tmp_path, name="Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", threads=8,
                 guest=False,
                 cgroup=f"4:memory:/docker/{cid}\n3:cpuset:/docker/{cid}\n"
                        f"2:cpu,cpuacct:/docker/{cid}\n0::/\n")
    fs = paths.sysfs / "fs" / "cgroup"
    write(fs / "unified" / "cgroup.procs", "")
    write(fs / "cpu,cpuacct" / "cpu.cfs_quota_us", "150000\n")
    write(fs / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    write(fs / "cpu,cpuacct" / "cpuacct.usage", "2500000000\n")
    write(fs / "cpuset" / "cpuset.cpus", "0-3\n")
    write(fs / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")  # unlimited
    m = detect(paths)
    assert m.cpu_limit == 1.5 and m.limits.memory_gb is None
    assert m.limits.cpu_seconds() == pytest.approx(2.5)
    # no memory limit: its share of the machine's memory, in proportion to its CPUs
    assert machine_pricing(m).memory_gb == pytest.approx(8 * 1.5 / 8)
    # a cpuset alone narrower than the machine limits too
    write(fs / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    assert detect(paths).cpu_limit == 4.0


def test_bare_metal_with_a_known_cpu(tmp_path: Path) -> None:
    paths = host(tmp_path, name="AMD EPYC 7763 64-Core Processor", vendor="AuthenticAMD",
                 family=25, model=1, threads=256, sockets=2, guest=False, mem_kb=512 * 2**20,
                 dmi={"sys_vendor": "Dell Inc.", "product_name": "PowerEdge R7525"})
    m = detect(paths)
    assert not m.virtual and m.hypervisor.name is None and m.cpu_limit is None
    est = estimate_machine(m, 1.0)
    assert est.case == "tdp" and est.tdp_watts == 560.0  # 280 W x 2
    assert est.parts["cpu"] == pytest.approx(560 * fig("amd-epyc-gen3", "tdp_full"))
    assert est.parts["platform"] == pytest.approx(2 * PARAMS["platform_full_w_per_socket"])
    assert est.parts["ram"] == pytest.approx(512 * PARAMS["ram_w_per_gb"])


def test_bare_metal_with_an_unknown_cpu(tmp_path: Path) -> None:
    paths = host(tmp_path, name="Mystery CPU 9000", vendor="Mystery", family=99, model=1,
                 threads=8, guest=False)
    m = detect(paths)
    assert m.generation is None and m.generation_source == "no generation known for this CPU"
    est = estimate_machine(m, 0.0)
    assert est.case == "default"
    assert est.parts["cpu"] == pytest.approx(8 * fig("*", "thread_idle_w"))
    assert est.error[0] == PARAMS["error_default_idle"]


def test_clouds_and_vendors_that_are_not_what_they_seem(tmp_path: Path) -> None:
    azure = detect(host(tmp_path / "a", name="Intel Xeon", dmi={
        "sys_vendor": "Microsoft Corporation", "product_name": "Virtual Machine",
        "chassis_asset_tag": "7783-7084-3265-9085-8269-3286-77"}))
    assert azure.hypervisor.cloud == "azure" and azure.hypervisor.name == "Microsoft Hyper-V"
    surface = detect(host(tmp_path / "b", name="Intel Core", guest=False, dmi={
        "sys_vendor": "Microsoft Corporation", "product_name": "Surface Laptop 5"}))
    assert not surface.virtual and surface.hypervisor.name is None
    chromebook = detect(host(tmp_path / "c", name="Intel Core", guest=False, dmi={
        "sys_vendor": "Google", "product_name": "Eve"}))
    assert chromebook.hypervisor.cloud is None
    metal = detect(host(tmp_path / "d", name="Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz",
                        guest=False, threads=96, sockets=2,
                        dmi={"sys_vendor": "Amazon EC2", "product_name": "m5.metal"}))
    assert not metal.virtual and metal.hypervisor.cloud == "aws" and metal.instance.vcpus == 96
    assert estimate_machine(metal, 1.0).case == "tdp"
    xen = host(tmp_path / "e", name="Intel(R) Xeon(R) CPU E5-2676 v3 @ 2.40GHz",
               dmi={"sys_vendor": "Xen", "product_name": "HVM domU", "bios_version": "4.2.amazon"})
    write(xen.sysfs / "hypervisor" / "type", "xen\n")
    m = detect(xen)
    assert m.hypervisor.name == "Xen" and m.hypervisor.cloud == "aws"


@pytest.mark.parametrize("cpu_max", ["abc def", "-5 100000", "50000 0", "max", "", "1 2 3"])
def test_malformed_cgroup_files_are_no_limit(tmp_path: Path, cpu_max: str) -> None:
    paths = host(tmp_path, name="Intel Xeon Gold 6148", threads=4, guest=False)
    fs = paths.sysfs / "fs" / "cgroup"
    write(fs / "cgroup.controllers", "cpu\n")
    write(fs / "cpu.max", cpu_max)
    write(fs / "cpuset.cpus.effective", "garbage")
    write(fs / "cpu.stat", "usage_usec lots\n")
    m = detect(paths)
    assert m.cpu_limit is None and m.limits.cpu_seconds() is None


def test_unreadable_everything_still_describes_a_machine(tmp_path: Path) -> None:
    m = detect(Paths(sysfs=tmp_path / "nosys", procfs=tmp_path / "noproc"))
    assert m.cpu.threads >= 1 and m.memory_gb is None and m.limits is None
    assert estimate_machine(m, 0.5).case == "default"


@pytest.mark.parametrize(("given", "provider", "expected"), [
    ("m5.large", None, ("aws", 2)), ("aws:m5.large", None, ("aws", 2)),
    ("Standard_D16as_v4", None, ("azure", 16)), ("n2-standard-4", "gcp", ("gcp", 4)),
    ("m5.large", "gcp", None), ("no-such-type", None, None),
])
def test_instance_types_as_users_write_them(given: str, provider: str | None,
                                            expected: tuple[str, int] | None) -> None:
    found = lookup_instance(given, provider)
    assert (None if found is None else (found.provider, found.vcpus)) == expected


def test_the_readme_shows_what_probes_prints_for_a_kvm_guest(tmp_path: Path) -> None:
    """The README's `carbonmeter probes` example is this fixture's output, line for line."""
    import re
    import subprocess
    import sys

    paths = host(tmp_path, name="AMD EPYC", vendor="AuthenticAMD", family=26, model=2,
                 threads=2, mem_kb=8 * 2**20,
                 dmi={"sys_vendor": "QEMU", "product_name": "Standard PC (Q35 + ICH9, 2009)"})
    (paths.procfs / "stat").write_text("cpu  100 0 100 10000 0 0 0 0 0 0\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"paths: {{sysfs: {paths.sysfs}, procfs: {paths.procfs}}}\n")
    out = subprocess.run([sys.executable, "-m", "carbonmeter", "probes", "--config", str(cfg)],
                         capture_output=True, text=True, check=True).stdout
    block = re.search(r"^cpu_model .*?(?=^ram_model)", out, re.S | re.M).group(0)
    block = block.replace(str(paths.procfs), "/proc")
    readme = (CONFIG.parent / "README.md").read_text(encoding="utf-8")
    shown = re.search(r"```\n(cpu_model .*?)```", readme, re.S).group(1)
    assert block == shown
