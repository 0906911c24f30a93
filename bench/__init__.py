"""Benchmarks of the ProductFlo server: run with `.venv/bin/python -m bench.<name>` (see README)."""
