"""Adapter registry: catalog ``adapter`` name -> adapter. One module per upstream.

Each module opens with a docstring naming its upstream API and field mapping.
Adapters are imported when first used, so a worker pool loads only its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from shared.catalog import Catalog, CatalogError
from shared.errors import ServerError
from workers.adapters.base import Adapter

# adapter name -> "module:class"
_ADAPTERS: dict[str, str] = {
    "local": "workers.adapters.local:TestcardAdapter",
    "openai": "workers.adapters.openai:OpenAIImagesAdapter",
    "bfl": "workers.adapters.bfl:BflAdapter",
    "replicate": "workers.adapters.replicate:ReplicateAdapter",
    "fal": "workers.adapters.fal:FalAdapter",
    "ark": "workers.adapters.ark:ArkAdapter",
    "zhipu": "workers.adapters.zhipu:ZhipuAdapter",
    "stability": "workers.adapters.stability:StabilityAdapter",
}


class _Registry(Mapping[str, Adapter]):
    def __init__(self, paths: dict[str, str]) -> None:
        self._paths = paths
        self._loaded: dict[str, Adapter] = {}

    def __getitem__(self, name: str) -> Adapter:
        if name not in self._loaded:
            module, _, cls = self._paths[name].partition(":")
            self._loaded[name] = getattr(importlib.import_module(module), cls)()
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


ADAPTERS: Mapping[str, Adapter] = _Registry(_ADAPTERS)

# adapter name -> "module:class" of the adapter serving its edits and variations, where
# the upstream has endpoints of their own for them (OpenAI's /images/edits and
# /images/variations); other adapters serve them in `generate`, with
# `ImageRequest.operation`, `images` and `mask` set.
_EDIT_ADAPTERS: dict[str, str] = {
    "openai": "workers.adapters.openai_edits:OpenAIEditsAdapter",
}

EDIT_ADAPTERS: Mapping[str, Adapter] = _Registry(_EDIT_ADAPTERS)


def adapter_for(name: str, operation: str = "generate") -> Adapter | None:
    """The adapter of ``name`` for ``operation`` ("generate", "edit", "variation"), or
    None when this build has none."""
    if operation != "generate" and name in EDIT_ADAPTERS:
        return EDIT_ADAPTERS[name]
    return ADAPTERS.get(name)


def validate_catalog(catalog: Catalog) -> None:
    """Check every model against its adapter; :class:`CatalogError` naming the model and
    the option (or the problem) on the first that fails.

    Each adapter's ``options_model`` checks the model's ``options`` table (unknown
    keys, types, allowed values), and its ``check_model``, when it has one, what
    else only the adapter knows (its upstream name, endpoint or input schema).
    Run where a process loads the catalog (the worker at start, the API at start),
    so a broken catalog stops the deployment instead of failing requests with 500.
    Only the adapters of the catalog's families are imported; a family whose
    adapter this build lacks is left alone (its models answer 503 model_unavailable).
    """
    for model in catalog.models.values():
        family = catalog.family_of(model)
        if family.adapter not in ADAPTERS:
            continue  # served as 503 model_unavailable until the adapter exists
        adapter = ADAPTERS[family.adapter]
        try:
            adapter.options_model.of(model)
            if family.adapter in EDIT_ADAPTERS and (model.edits or model.variations):
                EDIT_ADAPTERS[family.adapter].options_model.of(model)
            check = getattr(adapter, "check_model", None)
            if check is not None:
                check(model)
        except ServerError as exc:
            raise CatalogError(exc.message) from None
