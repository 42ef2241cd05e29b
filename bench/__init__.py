"""Benchmarks of trio-session-supervisor: ``python -m bench [--quick] [--out docs/bench]``.

Every figure is a median over repeated runs and every goal is a ratio against a baseline measured
in the same process (or, for HTTP, the same run), with baseline and subject interleaved.
"""
