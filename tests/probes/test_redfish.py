"""Whole-server power over Redfish, against a local BMC-shaped service answering real-shaped
JSON over HTTPS (tests/fixtures/redfish.py): each schema, chassis choice, authentication,
TLS, 401 and timeouts, and credentials never written anywhere."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from carbonmeter.probes.base import HOST, ProbeUnavailable
from carbonmeter.probes.redfish import RedfishProbe, load_password
from tests.fixtures.redfish import FakeBmc, self_signed_cert


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def bmcs(cert):
    made: list[FakeBmc] = []

    def make(shape: str = "dell", *, tls: bool = True) -> FakeBmc:
        made.append(FakeBmc(shape, tls=cert if tls else None))
        return made[-1]

    yield make
    for b in made:
        b.close()


def probe(bmc: FakeBmc, cert: tuple[Path, Path], **kw) -> RedfishProbe:
    args = {"username": bmc.user, "password": bmc.password, "ca_file": str(cert[0]),
            "timeout": 2.0, **kw}
    return RedfishProbe(bmc.url, **args)


def watts(p: RedfishProbe) -> dict[str, float]:
    result = p.read()
    assert result.errors == []
    return {r.device.id: r.power_w for r in result.readings}


def test_classic_power_resource_over_https(bmcs, cert) -> None:
    """iDRAC-like: the server chassis reports PowerControl; its backplane reports nothing."""
    bmc = bmcs("dell")
    p = probe(bmc, cert)
    try:
        (d,) = p.devices
        assert (d.id, d.kind, d.source, d.scope, d.name) == (
            "chassis-system-embedded-1", "platform", "redfish", HOST, "Computer System Chassis")
        assert "PowerControl[0] PowerConsumedWatts" in p.modes[d.id]
        assert dict(p.skipped)["Enclosure.Internal.0-1"] == "reports no power"
        assert watts(p) == {"chassis-system-embedded-1": 224.0}
        bmc.watts(dell=301.5)
        assert watts(p) == {"chassis-system-embedded-1": 301.5}
    finally:
        p.close()


def test_environment_metrics_come_first(bmcs, cert) -> None:
    bmc = bmcs("modern")
    p = probe(bmc, cert)
    assert watts(p) == {"chassis-1": 311.0}  # not the deprecated Power resource's 281
    assert p.modes["chassis-1"].startswith("EnvironmentMetrics PowerWatts")


def test_power_subsystem_sums_the_power_supplies(bmcs, cert) -> None:
    bmc = bmcs("psu_only")
    p = probe(bmc, cert)
    assert watts(p) == {"chassis-1": pytest.approx(298.5)}
    bmc.watts(psu=(200.0, 0.0))  # one supply idle, as in a 1+1 redundant pair
    assert watts(p) == {"chassis-1": 200.0}


def test_an_enclosure_is_not_added_to_its_blades(bmcs, cert) -> None:
    bmc = bmcs("blades")
    p = probe(bmc, cert)
    assert watts(p) == {"chassis-blade1": 410.0, "chassis-blade2": 395.0}
    assert "contains chassis Blade1, Blade2" in dict(p.skipped)["Enclosure"]
    only = probe(bmc, cert, chassis=["Enclosure"])
    assert watts(only) == {"chassis-enclosure": 2400.0}
    with pytest.raises(ProbeUnavailable, match=r"redfish\.chassis \['Nope'\] not found"):
        probe(bmc, cert, chassis=["Nope"])


def test_wrong_password_is_a_401_that_names_what_to_check(bmcs, cert, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    bmc = bmcs("dell")
    for auth in ("basic", "session"):
        with pytest.raises(ProbeUnavailable) as e:
            probe(bmc, cert, password="not-it", auth=auth)
        assert "HTTP 401" in str(e.value) and "user 'monitor'" in str(e.value)
        assert "redfish.password_env" in str(e.value) and "not-it" not in str(e.value)
    assert "not-it" not in caplog.text and bmc.password not in caplog.text


def test_an_untrusted_certificate_says_how_to_trust_it(bmcs, cert) -> None:
    bmc = bmcs("dell")
    with pytest.raises(ProbeUnavailable, match=r"TLS certificate is not trusted .*"
                                               r"redfish\.ca_file"):
        probe(bmc, cert, ca_file=None)
    assert watts(probe(bmc, cert, ca_file=None, verify_tls=False)) == {
        "chassis-system-embedded-1": 224.0}


def test_a_slow_bmc_times_out_and_the_next_reading_recovers(bmcs, cert) -> None:
    bmc = bmcs("dell")
    p = probe(bmc, cert, timeout=0.5)
    bmc.delay = 1.0
    result = p.read()
    assert result.readings == []
    assert "no answer within 0.5 s (redfish.timeout_seconds)" in result.errors[0]
    bmc.delay = 0
    assert watts(p) == {"chassis-system-embedded-1": 224.0}
    bmc.delay = 1.0
    with pytest.raises(ProbeUnavailable, match=r"no answer within 0\.5 s"):
        probe(bmc, cert, timeout=0.5)


def test_session_is_opened_once_renewed_when_expired_and_deleted_at_close(bmcs, cert) -> None:
    bmc = bmcs("dell", tls=False)
    p = probe(bmc, cert, auth="session")
    assert len(bmc.sessions) == 1
    assert watts(p) == {"chassis-system-embedded-1": 224.0}
    bmc.expire_sessions()  # the BMC restarted, or the session timed out
    assert watts(p) == {"chassis-system-embedded-1": 224.0}
    posts = [r for r in bmc.requests if r[0] == "POST"]
    assert len(posts) == 2
    gets = [r for r in bmc.requests if r[0] == "GET"]
    assert all("Authorization" not in h and "X-Auth-Token" in h for _, _, h in gets)
    p.close()
    assert bmc.sessions == {} and bmc.requests[-1][0] == "DELETE"


def test_basic_authentication_on_each_request(bmcs, cert) -> None:
    bmc = bmcs("dell", tls=False)
    watts(probe(bmc, cert))
    assert all(h.get("Authorization", "").startswith("Basic ") for _, _, h in bmc.requests)
    assert not any(m == "POST" for m, _, _ in bmc.requests)


def test_password_from_a_file_or_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    assert load_password("REDFISH_PASSWORD", str(secret), {}) == "from-file"
    assert load_password("BMC_PW", None, {"BMC_PW": "from-env"}) == "from-env"
    assert load_password("BMC_PW", None, {}) is None
    with pytest.raises(ProbeUnavailable, match=r"cannot read redfish\.password_file"):
        load_password("X", str(tmp_path / "missing"), {})


def test_nothing_listening(cert) -> None:
    with pytest.raises(ProbeUnavailable, match="cannot connect"):
        RedfishProbe("https://127.0.0.1:9", username="u", password="p", timeout=1)
