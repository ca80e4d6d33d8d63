"""The bundled default.yaml as Python data, so that loading the defaults parses no YAML.

Generated from config/default.yaml, which stays the commented reference users read; run
`python -m carbonmeter.config.defaults` after editing it (a test fails while the two differ).
"""

from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, Any] = {'server': {'listen': '0.0.0.0:29100',
            'web_config_file': None,
            'healthz_auth': False},
 'sampler': {'interval_seconds': 15, 'probe_timeout_seconds': 2},
 'log': {'level': 'info'},
 'paths': {'sysfs': '/sys', 'procfs': '/proc', 'devfs': '/dev'},
 'probes': {'disabled': []},
 'rapl': {'psys': False},
 'hwmon': {'include': [], 'exclude': [], 'kinds': {}},
 'gpu': {'devices': []},
 'powermetrics': {'command': '/usr/bin/powermetrics',
                  'interval_ms': None},
 'powergadget': {'command': None, 'log': None, 'resolution_ms': 1000},
 'ipmi': {'command': 'ipmitool', 'args': [], 'timeout_seconds': 5},
 'redfish': {'url': None,
             'username': None,
             'password_env': 'REDFISH_PASSWORD',
             'password_file': None,
             'auth': 'basic',
             'verify_tls': True,
             'ca_file': None,
             'timeout_seconds': 5,
             'chassis': []},
 'cpu': {'tdp_watts': None, 'instance_type': None},
 'ram': {'watts_per_gb': 0.1},
 'carbon': {'region': None,
            'cloud': None,
            'intensity_g_per_kwh': None,
            'schedule': None,
            'mix': None,
            'source_intensities': {'coal': 995,
                                   'oil': 816,
                                   'natural_gas': 743,
                                   'nuclear': 29,
                                   'hydro': 26,
                                   'wind': 26,
                                   'solar': 48,
                                   'biomass': 230,
                                   'geothermal': 38,
                                   'other': 475},
            'providers': [],
            'pue': 1.0},
 'otlp': {'enabled': None,
          'endpoint': None,
          'protocol': None,
          'headers': None,
          'insecure': None,
          'certificate': None,
          'client_certificate': None,
          'client_key': None,
          'interval_seconds': None,
          'temporality': None,
          'timeout_seconds': None},
 'pushgateway': {'url': None,
                 'job': 'carbonmeter',
                 'instance': None,
                 'grouping': {},
                 'interval_seconds': None,
                 'username': None,
                 'password': None,
                 'certificate': None,
                 'client_certificate': None,
                 'client_key': None,
                 'timeout_seconds': 10,
                 'delete_on_exit': False},
 'emissions_log': {'path': None,
                   'format': 'csv',
                   'project_name': 'carbonmeter'},
 'embodied': {'devices': {}},
 'declared': [],
 'attribution': {'level': 'none',
                 'scope': 'node',
                 'idle_policy': 'unattributed',
                 'idle_watts': {},
                 'top_n': 100,
                 'min_energy_joules': 1,
                 'cgroupfs': None,
                 'kubelet_url': None,
                 'kubelet_token_file': '/var/run/secrets/kubernetes.io/serviceaccount/token',
                 'kubelet_ca_file': None,
                 'kubelet_insecure_tls': False,
                 'downward_api_dir': '/etc/podinfo'},
 'state': {'path': '/var/lib/carbonmeter/state.json',
           'checkpoint_seconds': 10}}


def generate() -> str:
    """This module's text for the bundled default.yaml as it is now."""
    import pprint
    from importlib import resources
    from pathlib import Path

    from carbonmeter.config.yamlfile import parse_yaml

    text = resources.files("carbonmeter.bundled").joinpath("default.yaml").read_text("utf-8")
    data = parse_yaml(text, "built-in defaults")
    here = Path(__file__).read_text("utf-8")
    head = here[:here.index("DEFAULTS: dict[str, Any] = ")]
    tail = here[here.index("\n\ndef generate()"):]
    body = pprint.pformat(data, width=70, sort_dicts=False)
    return f"{head}DEFAULTS: dict[str, Any] = {body}\n{tail}"


if __name__ == "__main__":
    from pathlib import Path

    Path(__file__).write_text(generate(), "utf-8")
