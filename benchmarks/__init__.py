"""Benchmarks: eventbus against the raw clients and a peer library, as ratios (see docs/performance.md)."""
