"""Benchmarks that print side-by-side ratios (run each file as a script)."""
