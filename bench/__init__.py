"""Benchmarks (not tests): `python -m bench` is the speed benchmark; see bench/__main__.py."""
