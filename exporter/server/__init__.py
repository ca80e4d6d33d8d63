"""The HTTP endpoint: /metrics, /healthz and the landing page, with TLS and basic auth."""
