"""The contenders the product is measured against: the same job written two other ways.

Each peer is a standalone program, started by the benchmark like the product is.
"""
