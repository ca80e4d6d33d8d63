"""Prometheus families for the workload attribution in a snapshot.

Every row carries `kind` and `workload` (pod, container, service, process; or host, other,
unattributed, whose level labels are empty) and the level's labels, so one family always has
one label set and `sum by (kind)` over it equals the host totals.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from carbonmeter.attribution.view import AttributionView


def families(view: AttributionView) -> Iterator[Metric]:
    labels = ("kind", "workload", *view.label_names)
    energy = CounterMetricFamily(
        "carbonmeter_workload_energy_joules", "Energy attributed to a workload since its "
        "series appeared; with host, other and unattributed it adds up to the host's.",
        labels=labels, unit="joules")
    emissions = CounterMetricFamily(
        "carbonmeter_workload_emissions_grams", "CO2-equivalent of a workload's energy, PUE "
        "applied, at the intensity of each interval.", labels=labels, unit="grams")
    power = GaugeMetricFamily(
        "carbonmeter_workload_power_watts", "Mean power attributed to a workload over the "
        "last interval.", labels=labels, unit="watts")
    for r in view.rows:
        values = (r.kind, r.workload, *r.labels)
        energy.add_metric(values, r.energy_j)
        emissions.add_metric(values, r.emissions_g)
        if r.power_w is not None:
            power.add_metric(values, r.power_w)
    yield from (energy, emissions, power)
    idle = GaugeMetricFamily(
        "carbonmeter_idle_power_watts", "Idle power the attribution assumes for a device "
        "(how: configured, model, or lowest_seen).", labels=("device", "kind", "how"),
        unit="watts")
    for i in view.idle:
        idle.add_metric((i.device, i.kind, i.how), i.watts)
    yield idle
    if view.seconds is not None:
        yield GaugeMetricFamily(
            "carbonmeter_attribution_duration_seconds", "Time the last interval's attribution "
            "took: reading usage and sharing energy.", view.seconds, unit="seconds")
