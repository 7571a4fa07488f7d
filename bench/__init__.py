"""Benchmarks of the inspection platform (see BENCHMARKS.md). Run ``python -m bench.<name>``."""
