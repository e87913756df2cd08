"""Benchmarks: eventbus against the raw clients and a peer library, as ratios.

Run ``python -m benchmarks.run``; see docs/performance.md.
"""
