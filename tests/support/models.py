"""Models the end-to-end tests pick to stand for each upstream family."""

from __future__ import annotations

# One representative model per family (the cheapest that takes n > 1 where one does).
REPRESENTATIVE = {
    "openai": "dall-e-2",
    "bfl": "black-forest-labs/flux-2-pro",
    "replicate": "flux-schnell",
    "fal": "zhipu/z-image-turbo",
    "ark": "bytedance/seedream-4.0",
    "zhipu": "zhipu/glm-image",
    "stability": "stability/stable-image-core",
}
