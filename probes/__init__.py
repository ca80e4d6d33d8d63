"""Power sources. One module per source; `probes.base` is the shared interface."""
