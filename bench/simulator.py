"""The project's OpenAI Images simulator, optionally with photo-like image payloads.

    python -m bench.simulator --port 9100 --latency 1.0 --api-key sim-key \
        [--images noise] [--prewarm 512x512,1024x1024]

Everything is ``python -m simulators openai`` (same options, same
``/_sim/config``), with TCP_NODELAY on its connections (see
``simulators.__main__.NoDelayWSGIServer``), and ``--images noise``: the simulator's images are
solid colours, which PNG compresses to a few kB, far smaller than what image
models return. With ``noise`` each image is random pixels quantised to 4 bits
per channel, which PNG (level 1) stores in about as many bytes as a real
generated image: 1024x1024 about 2 MB, 512x512 about 500 kB, 256x256 about
125 kB. Like the solid ones they are cached per (size, colour), so the
simulator spends almost no CPU on them after the first few; ``--prewarm
WxH,...`` renders those sizes before the simulator starts serving.
"""

from gevent import monkey

monkey.patch_all()

import functools  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from PIL import Image  # noqa: E402

import simulators.__main__ as simulator_cli  # noqa: E402
import simulators.openai_images as openai_images  # noqa: E402
from shared.memory_tuning import keep_large_buffers  # noqa: E402

_QUANTISE = bytes(b & 0xF0 for b in range(256))


def noise_png(width: int, height: int, fmt: str, transparent: bool, colour: int, compression: int):
    """Like ``openai_images._encode`` but with random, photo-sized pixels (tinted by colour)."""
    if fmt != "png" or transparent:
        return _solid(width, height, fmt, transparent, colour, compression)
    raw = os.urandom(width * height * 3).translate(_QUANTISE)
    image = Image.frombytes("RGB", (width, height), raw)
    tint = Image.new("RGB", (width, height), openai_images.PALETTE[colour])
    image = Image.blend(image, tint, 0.25)
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


_solid = openai_images._encode


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    keep_large_buffers()  # as the gateway does: fewer page faults per image
    images = "solid"
    if "--images" in args:
        at = args.index("--images")
        images = args[at + 1]
        del args[at : at + 2]
    prewarm: list[tuple[int, int]] = []
    if "--prewarm" in args:
        at = args.index("--prewarm")
        prewarm = [tuple(int(x) for x in size.split("x")) for size in args[at + 1].split(",")]
        del args[at : at + 2]
    if images not in ("solid", "noise"):
        print("error: --images must be 'solid' or 'noise'", file=sys.stderr)
        return 2
    if images == "noise":
        cached = functools.lru_cache(maxsize=256)(noise_png)
        openai_images._encode = cached
    for width, height in prewarm:
        # Fill the image cache before serving, so no request waits for a first render.
        for colour in range(len(openai_images.PALETTE)):
            openai_images._encode(width, height, "png", False, colour, 100)
    return simulator_cli.main(["openai", *args])


if __name__ == "__main__":
    sys.exit(main())
