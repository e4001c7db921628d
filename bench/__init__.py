"""The benchmark: `python -m bench` (or `make bench`) runs the product and two peers
through the same scenarios and prints one table; it asserts nothing (bench/README.md).
"""
