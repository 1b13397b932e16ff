"""Benchmarks of jaxtricks against its baselines, each run in the same process."""
