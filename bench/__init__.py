"""Benchmarks for prefork_lb (not part of the installed package)."""
