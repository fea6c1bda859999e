"""Benchmarks for serialmuxd (not part of the test suite).  Entry point: ``python bench/run.py``."""
