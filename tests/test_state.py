"""The state file: durable checkpoints, and files that cannot be trusted set aside."""

from __future__ import annotations

import errno
import json
import logging
import os

import pytest

from carbonmeter import state
from carbonmeter.state import Store

DEVICE = {
    "id": "package-0", "kind": "cpu", "source": "rapl", "name": "Xeon", "estimated": False,
    "wrap_uj": 262143328911.04, "identity": "intel-rapl:0 max_energy_range_uj=262143328850",
    "max_power_w": None, "mean_power": False, "energy_j": 1234.5, "emissions_g": 0.25,
    "unmeasured_s": 3.0, "counter_uj": 99_000_000, "t": 100.0, "wall": 1.7e9,
}

# The sections a serving exporter with attribution per pod and an embodied figure writes.
ATTRIBUTION = {
    "level": "pod", "scope": "node", "kinds": ["cpu", "dram"],
    "special": {"host": {"cpu": [10.0, 0.5]}, "other": {}, "unattributed": {"dram": [1.0, 0.1]}},
    "dropped": {"cpu": [2.0, 0.2]},
    "workloads": [{"key": ["pod", "6f1e"], "workload": "pod", "labels": ["shop", "web-0"],
                   "attributes": [["k8s.pod.uid", "6f1e"]], "total": 40.0, "tracked": True,
                   "ended": False, "series": {"cpu": [30.0, 3.0], "dram": [10.0, 1.0]}}],
}
EMBODIED = {"host": 12.5}


def _file(**changes: object) -> bytes:
    doc = {"version": 1, "written_unix": 1, "boot_id": "b", "devices": [DEVICE],
           "attribution": ATTRIBUTION, "embodied": EMBODIED}
    doc.update(changes)
    return json.dumps(doc).encode()


def _workload(**changes: object) -> dict:
    return {**ATTRIBUTION, "workloads": [{**ATTRIBUTION["workloads"][0], **changes}]}


def test_checkpoint_round_trip_leaves_one_file(tmp_path):
    store = Store.open(str(tmp_path / "sub" / "state.json"))  # the directory is created
    assert store is not None
    assert store.save("boot-a", {"devices": [DEVICE]})
    restored = store.load()
    assert restored is not None
    assert restored.boot_id == "boot-a" and restored.devices == [DEVICE]
    # no temporary file left; the lock stays while the exporter runs
    assert sorted(os.listdir(tmp_path / "sub")) == [".state.json.lock", "state.json"]
    assert oct(os.stat(tmp_path / "sub" / "state.json").st_mode & 0o777) == "0o640"
    assert restored.attribution is None and restored.embodied == {}


def test_workload_and_embodied_sections_round_trip(tmp_path):
    store = Store(tmp_path / "state.json")
    assert store.save("b", {"devices": [DEVICE], "attribution": ATTRIBUTION,
                            "embodied": EMBODIED})
    restored = store.load()
    assert restored.attribution == ATTRIBUTION and restored.embodied == EMBODIED


def test_missing_file_is_a_fresh_start(tmp_path):
    assert Store(tmp_path / "state.json").load() is None


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "not JSON"),
    (None, "not JSON"),  # a checkpoint cut in the middle
    (b"\x00\xff garbage \x13\x37" * 50, "not JSON"),
    (json.dumps({"version": 2, "written_unix": 1, "boot_id": "", "devices": []}).encode(),
     "written by a newer carbonmeter (state version 2"),
    (json.dumps({"written_unix": 1}).encode(), "no version number"),
    (json.dumps({"version": 1, "written_unix": 1, "boot_id": "b",
                 "devices": [{**DEVICE, "energy_j": -1.0}]}).encode(),
     "energy_j is not a number from 0 to"),
    (json.dumps({"version": 1, "written_unix": 1, "boot_id": "b",
                 "devices": [{**DEVICE, "counter_uj": "12"}]}).encode(), "counter_uj is missing"),
    (json.dumps({"version": 1, "written_unix": 1, "boot_id": "b",
                 "devices": [DEVICE, DEVICE]}).encode(), "appears twice"),
    (_file(embodied={"host": -1}), "embodied.host is not a number of grams"),
    (_file(embodied=[1]), "embodied is not an object"),
    (_file(attribution={**ATTRIBUTION, "level": "node"}), "no known level"),
    (_file(attribution={**ATTRIBUTION, "special": {"pods": {}}}), "attribution.special is not"),
    (_file(attribution={**ATTRIBUTION, "dropped": {"cpu": [1.0]}}),
     "attribution.dropped.cpu is not [joules, grams]"),
    (_file(attribution=_workload(series={"cpu": [-3.0, 0.0]})),
     "attribution.workloads[0].series.cpu is not [joules, grams] from 0 to"),
    (_file(attribution=_workload(labels=["web-0"])), "labels are not 2 strings"),
    (_file(attribution=_workload(key=[])), "key is not a list"),
    (_file(attribution=_workload(total=None)), "total missing or invalid"),
    (_file(attribution=_workload(attributes=[["k8s.pod.uid"]])), "attributes are not"),
    (_file(attribution={**ATTRIBUTION, "workloads": ATTRIBUTION["workloads"] * 2}),
     "appears twice"),
])
def test_untrusted_file_is_kept_aside_with_the_reason(tmp_path, caplog, content, reason):
    path = tmp_path / "state.json"
    store = Store(path)
    if content is None:
        assert store.save("b", {"devices": [DEVICE]})
        content = path.read_bytes()[: len(path.read_bytes()) // 2]
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="carbonmeter.state"):
        assert store.load() is None
    assert not path.exists()
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("state.json.rejected-")]
    assert aside.read_bytes() == content  # kept for a person to look at
    assert reason in caplog.text and str(aside) in caplog.text and "starting from zero" in \
        caplog.text
    assert store.save("b", {"devices": [DEVICE]}) and store.load() is not None  # and life goes on


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, caplog):
    """ENOSPC is injected where the writer writes, after half the bytes went out, as a full
    disk does (write(2) fails part-way); the temporary file must go and the old file stay."""
    path = tmp_path / "state.json"
    store = Store(path)
    assert store.save("b", {"devices": [DEVICE]})
    before = path.read_bytes()
    real = state._write_all

    def full_disk(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(state, "_write_all", full_disk)
    bigger = [{**DEVICE, "energy_j": 99999.0}]
    with caplog.at_level(logging.INFO, logger="carbonmeter.state"):
        assert not store.save("b", {"devices": bigger})
        assert not store.save("b", {"devices": bigger})  # failing again: logged once
        assert caplog.text.count("No space left on device") == 1
        assert path.read_bytes() == before and os.listdir(tmp_path) == ["state.json"]
        assert store.load().devices == [DEVICE]
        monkeypatch.setattr(state, "_write_all", real)  # space is back
        assert store.save("b", {"devices": bigger})
    assert "work again" in caplog.text
    assert store.load().devices == bigger


def test_unwritable_directory_disables_persistence_with_one_line(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="carbonmeter.state"):
        assert Store.open(str(blocker / "state.json")) is None
    assert len(caplog.records) == 1 and "totals restart from zero" in caplog.text


def test_leftover_temporary_files_are_swept(tmp_path):
    (tmp_path / ".state.json.1234.5678.tmp").write_text("{")
    (tmp_path / "unrelated.tmp").write_text("")
    Store.open(str(tmp_path / "state.json"))
    assert sorted(os.listdir(tmp_path)) == [".state.json.lock", "unrelated.tmp"]


def test_boot_id_comes_from_procfs(tmp_path):
    (tmp_path / "sys" / "kernel" / "random").mkdir(parents=True)
    (tmp_path / "sys" / "kernel" / "random" / "boot_id").write_text("abc-123\n")
    assert state.boot_id(tmp_path) == "abc-123"
    assert state.boot_id(tmp_path / "nowhere") == ""
