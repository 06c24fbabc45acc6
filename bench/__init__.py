"""Benchmarks: `python -m bench <suite>`. Results go to docs/BENCHMARKS.md with the command that produced them."""
