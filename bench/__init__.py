"""Benchmarks of imagegate: gateway overhead, requests held at once, throughput, scale-out.

``python -m bench.run`` runs the standard scenarios on this machine against a
private stack (``bench.stack``) and prints a table; ``python -m bench.load``
is the load generator alone, usable against any OpenAI-compatible gateway.
See ``bench/README.md``.
"""
