"""Benchmarks behind ``make bench``: each writes a JSON result under ``bench/results/``.

Speed and memory targets live here, not in timed tests: the machines are shared and noisy, so
the numbers are measured and reported, with the target beside them, rather than asserted.
"""
