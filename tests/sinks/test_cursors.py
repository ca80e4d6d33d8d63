"""Every sink sees every final value: one export cursor per sink in the attribution ledger.

A Prometheus server scrapes every interval; an OTLP collector receives an export only at the
end. A container ends in between. Its series must stay until both have exported its last
value: with one shared watermark, the first scrape after its end let the ledger drop it, and
the OTLP collector never received the container's final energy.
"""

from __future__ import annotations

import pytest

from carbonmeter.attribution.ledger import Ledger
from carbonmeter.attribution.view import Identity
from carbonmeter.carbon.intensity import Intensity, Static
from carbonmeter.config import OtlpConfig
from carbonmeter.sampler import Sampler
from carbonmeter.sinks.otlp import OtlpSink
from carbonmeter.sinks.prometheus import Renderer
from tests.attribution.helpers import CPU, DRAM, attributor
from tests.fakes.probe import ScriptedProbe
from tests.otlp_receiver import Receiver


def otlp_once(endpoint: str) -> OtlpConfig:
    """An export interval far beyond the test: the sink exports only at close()."""
    return OtlpConfig(enabled=True, endpoint=endpoint, protocol="http/protobuf", headers={},
                      insecure=True, certificate=None, client_certificate=None,
                      client_key=None, interval_seconds=3600, temporality="cumulative",
                      timeout_seconds=5)


def test_a_rare_exporter_still_gets_the_final_value_of_an_ended_workload(ram_path):
    from tests.fixtures.node import standard_node

    sn = standard_node(ram_path, processes=60)
    node, pod = sn.node, sn.pods[1]
    a = attributor(node, "container", idle_watts={"cpu": 0}, readers=("prometheus", "otlp"))
    sampler = Sampler([ScriptedProbe.counting(CPU, DRAM, joules=10.0)],
                      Static(Intensity(56.0, "FR", "bundled", "t")), pue=1.0, interval=3600,
                      attributor=a)
    scrape = Renderer(lambda: sampler.latest, "prometheus")
    sampler.sample()
    cid = pod.containers["c1"][:12]
    c1 = node.container_rel(pod, "c1")
    pid = next(p.pid for p in node.procs.values() if p.cgroup == c1)
    for _ in range(3):  # c1 works; Prometheus scrapes each interval
        node.run(pid, 0.5)
        node.elapse(1)
        node.flush()
        sampler.sample()
        scrape.render("", False)
    final = next(r.energy_j for r in sampler.latest.attribution.rows
                 if r.labels[2] == cid and r.kind == "cpu")
    node.remove_container(pod, "c1")
    for _ in range(4):  # c1 has ended; scraped again and again, not yet exported over OTLP
        node.elapse(1)
        node.flush()
        sampler.sample()
        scrape.render("", False)
    assert cid in scrape.render("", False)[0].decode()  # kept: OTLP has not exported it
    with Receiver("http/protobuf") as receiver:
        sink = OtlpSink(otlp_once(receiver.endpoint), lambda: sampler.latest)
        sink.start()
        sink.close()
        assert sink.delivered
    got = [p for r in receiver.requests() for p in r.points()
           if p.metric == "carbonmeter.workload.energy"
           and p.attributes.get("k8s.container.name") == cid]
    cpu = [p.value for p in got if p.attributes["hw.type"] == "cpu"]
    assert cpu == [pytest.approx(final)]
    sampler.sample()  # both have exported it: now it goes
    assert cid not in scrape.render("", False)[0].decode()


def test_an_ended_series_waits_for_the_slowest_reader():
    led = Ledger(top_n=10, min_energy_j=0.0)
    led.register("prometheus")
    led.register("otlp")
    gone = ("pod", "gone")
    led.record({gone: Identity("pod", ("ns", "gone"))}, {"cpu": {gone: 5.0}},
               {"cpu": {gone: 5.0}}, 0.0)
    led.record({}, {"cpu": {}}, {"cpu": {}}, 0.0)  # it has ended
    shown = [r for r in led.rows(2) if r.workload == "pod"]
    assert [r.energy_j for r in shown] == [5.0]
    for _ in range(5):  # Prometheus keeps up; OTLP does not export
        led.ack("prometheus", led.interval)
        led.record({}, {"cpu": {}}, {"cpu": {}}, 0.0)
        assert [r.workload for r in led.rows(2)].count("pod") == 1
    led.ack("otlp", led.interval)
    led.record({}, {"cpu": {}}, {"cpu": {}}, 0.0)
    assert [r.workload for r in led.rows(2)].count("pod") == 0
    assert led.hidden()["cpu"][0] == 5.0  # dropped, not lost: the rows still add up
    before = dict(led.cursors)
    led.ack("unknown", 10**6)  # a reader that never registered moves nothing
    assert led.cursors == before
