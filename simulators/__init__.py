"""Protocol-faithful stand-ins for the upstream image providers.

Each provider module defines one :class:`simulators.base.Simulator` subclass
(its routes and state machine) and ``create_app(SimConfig) -> Flask``; run one
with ``python -m simulators <provider> --port 0`` (see ``simulators/__main__.py``).
Each module's docstring is its specification: the protocol it imitates, its
errors, its prompt conventions and its fault injection. Simulators never import
gateway code: they play the outside world.
"""

# provider name (the CLI sub-command of ``python -m simulators``) -> module whose
# ``create_app(SimConfig)`` makes the WSGI app; one module per upstream protocol.
PROVIDERS: dict[str, str] = {
    "openai": "simulators.openai_edits",  # generations (openai_images) plus edits, variations
    "bfl": "simulators.bfl",
    "replicate": "simulators.replicate",
    "fal": "simulators.fal",
    "ark": "simulators.ark",
    "zhipu": "simulators.zhipu",
    "stability": "simulators.stability",
}
