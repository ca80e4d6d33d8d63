"""What machine this is: bare metal or a guest, which cloud and instance, a container's limits.

The estimate of a machine nothing measures depends on what it is: a guest is priced as its
share of a host, a container held to a CPU limit by that limit, a CPU hidden behind a generic
name by its generation. Everything is read from files, through `Paths`, so fixture trees can
stand for every case:

- ``/proc/cpuinfo``: model name, vendor, family and model, sockets, logical CPUs, and the
  ``hypervisor`` flag every x86 hypervisor sets in its guests' CPUID;
- ``/sys/hypervisor/type`` (Xen guests) and the DMI strings under ``/sys/class/dmi/id`` that
  every user may read (``sys_vendor``, ``product_name``, ``bios_vendor``, ``bios_version``,
  ``chassis_asset_tag``): which hypervisor or cloud, and on EC2 the instance type, which Nitro
  puts in ``product_name``;
- the process's control group (``/proc/self/cgroup``, then ``/sys/fs/cgroup``): cgroup v2
  ``cpu.max``, ``cpuset.cpus.effective`` and ``memory.max``; cgroup v1 (the hybrid layout
  too) ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, ``cpuset.cpus`` and
  ``memory.limit_in_bytes``. Limits nest, so the tightest of the cgroup and its ancestors
  holds.

Nothing here raises for a file that is missing, unreadable or malformed: that fact is unknown,
and `Machine.notes` says which inputs decided the rest.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from carbonmeter.probes.base import Paths
from carbonmeter.probes.cpu_generations import cpu_generation

__all__ = ["Cpu", "CpuLimit", "Hypervisor", "Instance", "Machine", "detect", "detect_hypervisor",
           "detect_limits", "lookup_instance", "parse_instances", "read_cpu", "read_dmi"]

_READ_LIMIT = 1 << 20  # no file this module reads is larger; a bigger one is not believed
DMI_FIELDS = ("sys_vendor", "product_name", "product_version", "bios_vendor", "bios_version",
              "chassis_vendor", "chassis_asset_tag", "board_vendor")
AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"  # what Azure puts in every VM's chassis
# sys_vendor (lowercase prefix), what product_name must contain ("" for anything), the
# hypervisor, the cloud. The product condition keeps physical machines of the same vendors
# (a Surface laptop, a Chromebook) what they are.
_DMI_VENDORS = (
    ("amazon ec2", "", "Amazon EC2 (Nitro)", "aws"),
    ("google", "google compute engine", "Google Compute Engine", "gcp"),
    ("microsoft corporation", "virtual machine", "Microsoft Hyper-V", None),
    ("qemu", "", "KVM (QEMU)", None),
    ("vmware", "", "VMware", None),
    ("xen", "", "Xen", None),
    ("innotek gmbh", "", "VirtualBox", None),
    ("openstack", "", "OpenStack (KVM)", None),
    ("alibaba cloud", "", "Alibaba Cloud ECS", "alibaba"),
    ("digitalocean", "", "DigitalOcean (KVM)", "digitalocean"),
    ("hetzner", "", "Hetzner (KVM)", "hetzner"),
    ("parallels", "", "Parallels", None),
    ("bochs", "", "Bochs (QEMU)", None),
)
# product_name values that only a virtual machine has
_VIRTUAL_PRODUCTS = ("kvm", "virtual machine", "vmware", "virtualbox", "hvm domu",
                     "standard pc (", "google compute engine", "openstack nova", "droplet",
                     "bochs")
_EC2_TYPE = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9]+")


def _read(path: Path) -> str | None:
    """A small text file, stripped; None when it cannot be read or is implausibly large."""
    try:
        with open(path, "rb") as f:
            data = f.read(_READ_LIMIT + 1)
    except OSError:
        return None
    if len(data) > _READ_LIMIT:
        return None
    return data.decode("utf-8", "replace").strip()


# --- the CPU -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cpu:
    name: str
    vendor: str  # cpuinfo vendor_id: GenuineIntel, AuthenticAMD, ... ("" on ARM)
    family: int | None
    model: int | None
    sockets: int
    threads: int  # logical CPUs the OS sees
    hypervisor_flag: bool


def read_cpu(procfs: Path) -> Cpu:
    """The first CPU's description, the sockets (distinct physical ids) and logical CPUs."""
    text = _read(procfs / "cpuinfo") or ""
    name = vendor = ""
    family = model = None
    sockets: set[str] = set()
    threads, flag = 0, False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            threads += 1
        elif key == "model name" and not name:
            name = value
        elif key == "vendor_id" and not vendor:
            vendor = value
        elif key == "cpu family" and family is None:
            family = _int(value)
        elif key == "model" and model is None:
            model = _int(value)
        elif key == "physical id":
            sockets.add(value)
        elif key == "flags" and not flag:
            flag = "hypervisor" in value.split()
    return Cpu(name, vendor, family, model, max(1, len(sockets)),
               threads or os.cpu_count() or 1, flag)


def _int(text: str) -> int | None:
    try:
        value = int(text, 0)
    except ValueError:
        return None
    return value if 0 <= value < 1 << 16 else None


# --- hypervisor and cloud ------------------------------------------------------------------------


def read_dmi(sysfs: Path) -> dict[str, str]:
    """The world-readable DMI strings that are present and not empty."""
    out = {}
    for name in DMI_FIELDS:
        value = _read(sysfs / "class" / "dmi" / "id" / name)
        if value:
            out[name] = value[:200]
    return out


@dataclass(frozen=True)
class Hypervisor:
    virtual: bool
    name: str | None  # which hypervisor, when something names it
    cloud: str | None  # aws, gcp, azure, ... when DMI says
    evidence: tuple[str, ...]  # what decided it, one phrase each


def detect_hypervisor(cpu: Cpu, dmi: dict[str, str], sysfs: Path) -> Hypervisor:
    evidence: list[str] = []
    virtual = cpu.hypervisor_flag
    if cpu.hypervisor_flag:
        evidence.append("cpuinfo flag 'hypervisor'")
    name = cloud = None
    xen = _read(sysfs / "hypervisor" / "type")
    if xen:
        name, virtual = xen.capitalize(), True
        evidence.append(f"/sys/hypervisor/type '{xen}'")
    vendor = dmi.get("sys_vendor", "")
    product = dmi.get("product_name", "")
    if any(p in product.lower() for p in _VIRTUAL_PRODUCTS):
        virtual = True
        evidence.append(f"DMI product_name '{product}'")
    for prefix, needs, hv_name, hv_cloud in _DMI_VENDORS:
        if vendor.lower().startswith(prefix) and needs in product.lower():
            cloud = hv_cloud
            evidence.append(f"DMI sys_vendor '{vendor}'")
            if virtual:
                name = name or hv_name
            break
    if dmi.get("chassis_asset_tag") == AZURE_ASSET_TAG:
        cloud = "azure"
        evidence.append("DMI chassis_asset_tag of an Azure VM")
    elif dmi.get("chassis_asset_tag") == "OracleCloud.com":
        cloud = "oracle"
        evidence.append("DMI chassis_asset_tag 'OracleCloud.com'")
    if "amazon" in dmi.get("bios_version", "").lower() and cloud is None:
        cloud = "aws"  # EC2's Xen generation
        evidence.append(f"DMI bios_version '{dmi['bios_version']}'")
    if name is None and virtual:
        name = "unnamed hypervisor"
    return Hypervisor(virtual, name, cloud, tuple(evidence))


@dataclass(frozen=True)
class Instance:
    provider: str
    instance_type: str
    vcpus: float  # shared-core types have fractions (e2-micro: 0.25)
    memory_gb: float
    cpu: str  # the platform CPU as the provider's list names it
    generation: str | None


def parse_instances(text: str) -> dict[tuple[str, str], Instance]:
    """cloud_instances.csv -> {(provider, lowercase type): Instance}."""
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    out = {}
    for r in csv.DictReader(io.StringIO(body)):
        out[(r["provider"], r["instance_type"].lower())] = Instance(
            r["provider"], r["instance_type"], float(r["vcpus"]), float(r["memory_gb"]), r["cpu"],
            r["generation"] or None)
    return out


@functools.cache
def bundled_instances() -> dict[tuple[str, str], Instance]:
    from importlib import resources

    return parse_instances(
        resources.files("carbonmeter.bundled").joinpath("cloud_instances.csv").read_text("utf-8"))


def lookup_instance(instance_type: str, provider: str | None,
                    table: dict[tuple[str, str], Instance] | None = None) -> Instance | None:
    """An instance type as users and DMI write it: ``m5.large``, ``aws:m5.large``,
    ``n2-standard-4``, ``Standard_D16as_v4`` (Azure's API name for the list's ``D16as v4``).
    Without a provider the type must name one instance in one provider's list."""
    table = bundled_instances() if table is None else table
    given = instance_type.strip()
    if ":" in given:
        provider, given = given.split(":", 1)
    key = given.lower()
    if key.startswith("standard_"):
        key, provider = key.removeprefix("standard_").replace("_", " "), provider or "azure"
    if provider:
        return table.get((provider.lower(), key))
    found = [v for (_, k), v in table.items() if k == key]
    return found[0] if len(found) == 1 else None


# --- control groups ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuLimit:
    """What a container is held to, and where its own CPU time is counted."""

    cpus: float | None  # the CPU limit, in CPUs; None when there is none
    memory_gb: float | None  # the memory limit; None when there is none
    source: tuple[str, ...]  # which files set them
    usage_file: Path | None = None  # this cgroup's CPU time counter
    usage_scale: float = 0.0  # seconds per unit of that counter
    usage_key: str = ""  # "usage_usec" in a cpu.stat (v2); "" for a bare number (v1)

    def cpu_seconds(self) -> float | None:
        """The cgroup's CPU time so far, or None when it cannot be read."""
        if self.usage_file is None:
            return None
        text = _read(self.usage_file)
        if text is None:
            return None
        if self.usage_key:
            for line in text.splitlines():
                k, _, v = line.partition(" ")
                if k == self.usage_key:
                    text = v
                    break
            else:
                return None
        try:
            value = int(text.strip())
        except ValueError:
            return None
        return value * self.usage_scale if value >= 0 else None


def _own_cgroups(procfs: Path) -> dict[str, str]:
    """controller (or "" for the v2 line) -> this process's cgroup path."""
    out = {}
    for line in (_read(procfs / "self" / "cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in (parts[1].split(",") if parts[1] else [""]):
            out[controller] = parts[2]
    return out


def _chain(root: Path, rel: str) -> list[Path]:
    """The cgroup's directory and its ancestors up to the mount, leaf first. Inside a
    container the path is often the host's, and the mount is the container's own cgroup:
    then the mount itself."""
    leaf = root / rel.strip("/") if rel.strip("/") else root
    if not leaf.is_dir():
        leaf = root
    out = [leaf]
    while out[-1] != root and root in out[-1].parents:
        out.append(out[-1].parent)
    return out


def _cpus_in(cpuset: str | None) -> int | None:
    """How many CPUs a cpuset list (``0-3,8,10-11``) names."""
    if not cpuset:
        return None
    total = 0
    for part in cpuset.split(","):
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            return None
        if not 0 <= a <= b < 1 << 16:
            return None
        total += b - a + 1
    return total or None


def _bytes_limit(text: str | None) -> float | None:
    """A memory limit in GB; None for none ("max", or v1's near-2^63 "unlimited")."""
    try:
        value = int(text or "")
    except ValueError:
        return None
    return value / 2**30 if 0 < value < 1 << 60 else None


def detect_limits(paths: Paths, threads: int) -> CpuLimit | None:
    """This process's cgroup limits (module docstring), or None without a readable cgroup."""
    cgroupfs = paths.sysfs / "fs" / "cgroup"
    own = _own_cgroups(paths.procfs)
    if (cgroupfs / "cgroup.controllers").exists():
        return _limits_v2(cgroupfs, own.get("", "/"), threads)
    cpu_root = next((cgroupfs / n for n in ("cpu,cpuacct", "cpu", "cpuacct,cpu")
                     if (cgroupfs / n / "cpu.cfs_period_us").exists()), None)
    if cpu_root is not None:
        return _limits_v1(cgroupfs, cpu_root, own, threads)
    return None


def _limits_v2(root: Path, rel: str, threads: int) -> CpuLimit:
    chain = _chain(root, rel)
    cpus, memory, source = None, None, []
    for d in chain:
        text = _read(d / "cpu.max")
        if text:
            quota, _, period = text.partition(" ")
            try:
                q, p = (None if quota == "max" else int(quota)), int(period or "100000")
            except ValueError:
                q, p = None, 0
            if q is not None and q > 0 and p > 0 and (cpus is None or q / p < cpus):
                cpus = q / p
                source.append(f"cgroup v2 {d / 'cpu.max'}: {text}")
        limit = _bytes_limit(_read(d / "memory.max"))
        if limit is not None and (memory is None or limit < memory):
            memory = limit
            source.append(f"cgroup v2 {d / 'memory.max'}")
    cpus, source = _cpuset(cpus, source, chain[0] / "cpuset.cpus.effective", threads)
    return CpuLimit(cpus, memory, tuple(source), chain[0] / "cpu.stat", 1e-6, "usage_usec")


def _limits_v1(cgroupfs: Path, cpu_root: Path, own: dict[str, str],
               threads: int) -> CpuLimit:
    cpus, memory, source = None, None, []
    chain = _chain(cpu_root, own.get("cpu", "/"))
    for d in chain:
        quota = _read(d / "cpu.cfs_quota_us")
        period = _read(d / "cpu.cfs_period_us")
        try:
            q, p = int(quota or "-1"), int(period or "0")
        except ValueError:
            continue
        if q > 0 and p > 0 and (cpus is None or q / p < cpus):
            cpus = q / p
            source.append(f"cgroup v1 {d / 'cpu.cfs_quota_us'}: {q} / {p}")
    for d in _chain(cgroupfs / "memory", own.get("memory", "/")):
        limit = _bytes_limit(_read(d / "memory.limit_in_bytes"))
        if limit is not None and (memory is None or limit < memory):
            memory = limit
            source.append(f"cgroup v1 {d / 'memory.limit_in_bytes'}")
    cpuset = _chain(cgroupfs / "cpuset", own.get("cpuset", "/"))[0] / "cpuset.cpus"
    cpus, source = _cpuset(cpus, source, cpuset, threads)
    acct_root = next((cgroupfs / n for n in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu")
                      if (cgroupfs / n / "cpuacct.usage").exists()), None)
    usage = (_chain(acct_root, own.get("cpuacct", "/"))[0] / "cpuacct.usage"
             if acct_root else None)
    return CpuLimit(cpus, memory, tuple(source), usage, 1e-9)


def _cpuset(cpus: float | None, source: list[str], path: Path,
            threads: int) -> tuple[float | None, list[str]]:
    """A cpuset narrower than the machine limits the CPUs too."""
    n = _cpus_in(_read(path))
    if n is not None and n < threads and (cpus is None or n < cpus):
        return float(n), [*source, f"{path}: {n} CPUs"]
    return cpus, source


# --- the machine ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    cpu: Cpu
    memory_gb: float | None  # MemTotal
    hypervisor: Hypervisor
    instance_type: str | None
    instance: Instance | None
    limits: CpuLimit | None
    generation: str | None
    generation_source: str
    notes: tuple[str, ...] = field(default=())

    @property
    def virtual(self) -> bool:
        return self.hypervisor.virtual

    @property
    def cpu_limit(self) -> float | None:
        return self.limits.cpus if self.limits else None


def _memory_gb(procfs: Path) -> float | None:
    for line in (_read(procfs / "meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            try:
                kb = int(line.split()[1])
            except (IndexError, ValueError):
                return None
            return kb / 2**20 if 0 < kb < 1 << 40 else None
    return None


def detect(paths: Paths, *, instance_type: str = "",
           generations: dict[str, str] | None = None,
           instances: dict[tuple[str, str], Instance] | None = None) -> Machine:
    """Everything this module can tell about the machine, from `paths`.

    `instance_type` (the configuration's ``cpu.instance_type``) names the instance where DMI
    does not (Google Cloud and Azure publish it only through their metadata servers).
    """
    cpu = read_cpu(paths.procfs)
    dmi = read_dmi(paths.sysfs)
    hv = detect_hypervisor(cpu, dmi, paths.sysfs)
    notes = []
    given = instance_type.strip()
    product = dmi.get("product_name", "")
    if not given and hv.cloud == "aws" and _EC2_TYPE.fullmatch(product):
        given = product
        notes.append(f"instance type '{product}' from DMI product_name")
    elif given:
        notes.append(f"instance type '{given}' from cpu.instance_type")
    instance = lookup_instance(given, hv.cloud if ":" not in given else None,
                               instances) if given else None
    if given and instance is None:
        notes.append(f"instance type '{given}' is not in the bundled list")
    if generations is None:
        from carbonmeter.probes.power_model import bundled_generations

        generations = bundled_generations()
    generation, how = cpu_generation(cpu.name, generations, family=cpu.family, model=cpu.model,
                                     vendor=cpu.vendor)
    if generation is None and instance is not None and instance.generation:
        generation = instance.generation
        how = f"instance type {instance.instance_type} runs on {instance.cpu}"
    limits = detect_limits(paths, cpu.threads)
    if limits is not None and limits.cpus is not None and not math.isfinite(limits.cpus):
        limits = None
    return Machine(cpu, _memory_gb(paths.procfs), hv, given or None, instance, limits,
                   generation, how, tuple(notes))
