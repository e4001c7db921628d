"""The benchmark: `python -m bench` (or `make bench`) prints figures, asserts nothing.

It measures the controller's parts against a real kube-apiserver and the Compute
fake; see bench/README.md for what each table means.
"""
