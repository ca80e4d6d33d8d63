"""Measuring a span of time: `carbonmeter run`, `track()`, CodeCarbon's tracker."""
