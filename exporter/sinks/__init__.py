"""Where totals go: each sink reads the sampler's latest snapshot, never the hardware."""
