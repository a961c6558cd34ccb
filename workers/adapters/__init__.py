"""Adapter registry: catalog ``adapter`` name -> adapter instance. One module per upstream."""

from __future__ import annotations

from workers.adapters.base import Adapter
from workers.adapters.local import TestcardAdapter
from workers.adapters.openai import OpenAIImagesAdapter

ADAPTERS: dict[str, Adapter] = {
    "local": TestcardAdapter(),
    "openai": OpenAIImagesAdapter(),
}
