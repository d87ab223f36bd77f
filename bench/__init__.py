"""Benchmark and evaluation scripts (run from the repository root; see docs/benchmarks.md)."""
