"""progan_fast throughput regression suite (pytest-benchmark): ops, layers, training steps.

Run `pytest bench/` (tiny CPU smoke run without a GPU); see docs/bench.md.
"""
