"""Writing pictures so that a reader never sees half a file (pipeline/durable.py: atomic_write).

    from pipeline.tasks.image_io import save_image
    save_image(pil_image, "out/strip.png")                    # any PIL format, chosen by suffix
    save_image(first, "out/anim.gif", save_all=True, append_images=rest, duration=80, loop=0)
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from pipeline.durable import atomic_write


def save_image(image: Image.Image, path: str | Path, **params) -> Path:
    """Save `image` to `path` atomically (PIL format from the suffix); extra params go to PIL's save."""
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f"{path}: unknown image suffix {path.suffix!r} (use .png, .gif, .jpg, ...)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: image.save(tmp, format=image_format, **params))
