"""Writing pictures so that a reader never sees half a file: temp file in the same folder, then rename.

    from pipeline.tasks.image_io import save_image
    save_image(pil_image, "out/strip.png")                    # any PIL format, chosen by suffix
    save_image(first, "out/anim.gif", save_all=True, append_images=rest, duration=80, loop=0)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image


def save_image(image: Image.Image, path: str | Path, **params) -> Path:
    """Save `image` to `path` atomically (PIL format from the suffix); extra params go to PIL's save."""
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f"{path}: unknown image suffix {path.suffix!r} (use .png, .gif, .jpg, ...)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format=image_format, **params)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
