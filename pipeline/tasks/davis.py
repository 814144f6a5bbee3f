"""Read and write the DAVIS-2017 folder layout (the real benchmark's, and what `vssl synth` writes).

    from pipeline.tasks import davis
    names = davis.sequence_names("data/synth/davis", split="val")      # ImageSets/2017/val.txt
    seq = davis.read_sequence("data/synth/davis", names[0])
    seq.frames.shape, seq.masks.shape                                   # (T, H, W, 3), (T, H, W) uint8
    davis.write_masks("runs/davis_pred", seq.name, predicted_masks, seq.frame_names)

Layout under ROOT (resolution "480p" unless told otherwise):

    JPEGImages/480p/<seq>/00000.jpg ...     RGB frames, numbered from 00000 without gaps
    Annotations/480p/<seq>/00000.png ...    palette ("P") PNGs whose pixel values are object ids:
                                            0 background, 1..N objects (255 void in real DAVIS)
    ImageSets/2017/{train,val}.txt          one sequence name per line

Every frame must have its annotation (train/val do; test-dev's first-frame-only annotations are
not supported). Anything missing, extra, unreadable or of another size raises `DavisError` with
one line naming the sequence and file; so does a sequence name that is not a plain folder name
(`../x`, `a/b`), which could otherwise read or write outside ROOT. `write_masks` writes predictions in the same layout
(ROOT/Annotations/480p/<seq>/), all of a sequence or nothing: it fills a hidden temporary
folder and renames it into place.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.durable import replace_folder
from pipeline.tasks.image_io import save_image

FRAME_DIR = "JPEGImages"
MASK_DIR = "Annotations"
SETS_DIR = "ImageSets"


class DavisError(ValueError):
    """A DAVIS folder is incomplete or inconsistent; the message names the sequence and file."""


@dataclass
class DavisSequence:
    name: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    masks: np.ndarray  # (T, H, W) uint8 object ids
    frame_names: list[str]  # file stems, "00000", "00001", ...


@functools.cache
def davis_palette() -> tuple[int, ...]:
    """The PASCAL VOC / DAVIS palette as PIL wants it, flat [r0, g0, b0, r1, ...]: id 0 black,
    1 (128, 0, 0), 2 (0, 128, 0), 3 (128, 128, 0), ...; bits 0, 1, 2 of the id set the top bit of
    red, green, blue, bits 3, 4, 5 the next one down, and so on. Also what `vssl synth` writes."""
    palette = []
    for index in range(256):
        rgb = [0, 0, 0]
        for level in range(8):
            for channel in range(3):
                rgb[channel] |= ((index >> (3 * level + channel)) & 1) << (7 - level)
        palette.extend(rgb)
    return tuple(palette)


def sequence_names(root: str | Path, split: str = "val", year: str = "2017") -> list[str]:
    """Sequence names listed in ROOT/ImageSets/<year>/<split>.txt, in file order."""
    path = Path(root) / SETS_DIR / year / f"{split}.txt"
    if not path.is_file():
        raise DavisError(f"DAVIS split {split!r}: {path} not found")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DavisError(f"DAVIS split {split!r}: {path} lists no sequences")
    for name in names:
        _check_name(name)
    return names


def _check_name(name: str) -> None:
    """A sequence name comes from an ImageSets list (untrusted): it must be one plain folder name,
    so reading or writing ROOT/.../<name> never leaves ROOT."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name.startswith("."):
        raise DavisError(f"DAVIS sequence {name!r}: not a plain folder name (no '/', '\\', '..' or leading '.')")


def _numbered_files(folder: Path, suffix: str, name: str, what: str) -> list[str]:
    if not folder.is_dir():
        raise DavisError(f"DAVIS sequence {name!r}: {what} folder {folder} not found")
    stems = sorted(p.stem for p in folder.glob(f"*{suffix}"))
    if not stems:
        raise DavisError(f"DAVIS sequence {name!r}: no {suffix} files in {folder}")
    for index, stem in enumerate(stems):
        if stem != f"{index:05d}":
            raise DavisError(f"DAVIS sequence {name!r}: {what} {index:05d}{suffix} missing in {folder} "
                             f"(found {stem}{suffix} next)")
    return stems


def _open(path: Path, name: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except OSError as e:
        raise DavisError(f"DAVIS sequence {name!r}: cannot read {path}: {e}") from None
    return image


def read_mask(path: str | Path, name: str = "?") -> np.ndarray:
    """(H, W) uint8 object ids from an annotation PNG (palette "P" or greyscale "L")."""
    image = _open(Path(path), name)
    if image.mode not in ("P", "L"):
        raise DavisError(f"DAVIS sequence {name!r}: {path} has mode {image.mode}, expected a "
                         f"palette (P) PNG of object ids")
    return np.asarray(image, dtype=np.uint8)


def read_sequence(root: str | Path, name: str, resolution: str = "480p") -> DavisSequence:
    """All frames and annotations of one sequence, checked for gaps, strays and sizes."""
    _check_name(name)
    root = Path(root)
    frame_dir, mask_dir = root / FRAME_DIR / resolution / name, root / MASK_DIR / resolution / name
    frame_names = _numbered_files(frame_dir, ".jpg", name, "frame")
    mask_names = _numbered_files(mask_dir, ".png", name, "annotation")
    if len(mask_names) != len(frame_names):
        more, fewer = ((mask_dir / f"{mask_names[len(frame_names)]}.png", "frame")
                       if len(mask_names) > len(frame_names)
                       else (frame_dir / f"{frame_names[len(mask_names)]}.jpg", "annotation"))
        raise DavisError(f"DAVIS sequence {name!r}: {more} has no matching {fewer} "
                         f"({len(frame_names)} frames, {len(mask_names)} annotations)")
    frames, masks = [], []
    for stem in frame_names:
        frame = np.asarray(_open(frame_dir / f"{stem}.jpg", name).convert("RGB"))
        mask = read_mask(mask_dir / f"{stem}.png", name)
        expected = frames[0].shape[:2] if frames else frame.shape[:2]
        for path, size in ((frame_dir / f"{stem}.jpg", frame.shape[:2]), (mask_dir / f"{stem}.png", mask.shape)):
            if size != expected:
                raise DavisError(f"DAVIS sequence {name!r}: {path} is {size[1]}x{size[0]}, "
                                 f"expected {expected[1]}x{expected[0]} like frame 00000")
        frames.append(frame)
        masks.append(mask)
    return DavisSequence(name, np.stack(frames), np.stack(masks), frame_names)


def write_masks(root: str | Path, name: str, masks: np.ndarray, frame_names: list[str] | None = None,
                resolution: str = "480p") -> Path:
    """Write (T, H, W) object ids as palette PNGs to ROOT/Annotations/<resolution>/<name>/, replacing
    what was there only once every frame is written. Returns the sequence folder."""
    _check_name(name)
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.dtype != np.uint8:
        raise DavisError(f"DAVIS sequence {name!r}: masks must be (T, H, W) uint8, got "
                         f"{masks.dtype} {masks.shape}")
    frame_names = frame_names or [f"{t:05d}" for t in range(len(masks))]
    if len(frame_names) != len(masks):
        raise DavisError(f"DAVIS sequence {name!r}: {len(masks)} masks for {len(frame_names)} frame names")
    target = Path(root) / MASK_DIR / resolution / name
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=target.parent))
    try:
        palette = davis_palette()
        for stem, mask in zip(frame_names, masks):
            image = Image.fromarray(mask)  # mode L: pixel values are the ids
            image.putpalette(palette)  # L -> P, values kept
            save_image(image, staging / f"{stem}.png")
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
