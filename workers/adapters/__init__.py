"""Adapter registry: catalog ``adapter`` name -> adapter. One module per upstream.

Each module opens with a docstring naming its upstream API and field mapping.
Adapters are imported when first used, so a worker pool loads only its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

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
