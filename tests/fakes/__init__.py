"""Fakes of hardware libraries for tests (fake NVML)."""
