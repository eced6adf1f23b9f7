"""Benchmarks of numpyro-smile (run as modules: ``python -m benchmarks.<name>``)."""
