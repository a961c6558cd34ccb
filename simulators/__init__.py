"""Protocol-faithful stand-ins for the upstream image providers.

Each provider module offers ``create_app(SimConfig) -> Flask``; run one with
``python -m simulators <provider> --port 0`` (see ``simulators/__main__.py``).
Simulators never import gateway code: they play the outside world.
"""
