"""Rendering of one labelled synthetic video (pure numpy): textured shapes over a drifting texture.

    from data_prep.synth_render import CLASSES, sample_params, render_video
    params = sample_params(seed=0, index=5, num_frames=16, size=64)    # label = index % 8
    frames, boxes, masks = render_video(params)   # (T,H,W,3) uint8, (T,4) float32 xyxy, (T,H,W) uint8
    sample_params(0, 5, 16, 64, ranges=DrawingRanges(...))            # other ranges (synth.py: PRESETS)

The class is the motion of the target shape over the clip: move_left/right/up/down, rotate_cw/ccw
(clockwise as seen on screen), grow, shrink. Everything else -- shape, aspect, texture, colours,
start position/size/angle, the amounts of every class motion, a small nuisance drift/turn/scale,
1-2 smaller distractors with random motion, the background and its drift -- is drawn from
`np.random.default_rng([seed, index])` in one fixed order that never looks at the label. So
frame 0 is identical whatever the label, and video `index` depends only on (seed, index, ranges).
By default the shapes' colours are bright and the background's dark (DrawingRanges.object_colors,
background_colors), so a shape is told from the background by any pixel of it; ranges that change
only colours scale the same draws, so they leave every shape, motion, box and mask unchanged.

Class motions are totals over the clip (linear in time), so the classes stay separable for any
frame count, and the start position keeps the target fully inside the frame for every class.
Distractors are drawn behind the target, so the mask is the whole target silhouette.
Boxes are the exact bounds of the continuous shape (x1, y1 exclusive, pixel units), clipped to
the frame; masks are the shape sampled at pixel centres, so the two agree within a pixel.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields, replace

import numpy as np

CLASSES: tuple[str, ...] = ("move_left", "move_right", "move_up", "move_down",
                            "rotate_cw", "rotate_ccw", "grow", "shrink")
SHAPES: tuple[str, ...] = ("ellipse", "rectangle", "triangle", "diamond")
PATTERNS: tuple[str, ...] = ("stripes", "checker", "noise")


@dataclass(frozen=True)
class DrawingRanges:
    """Where every random quantity is drawn from. Lengths are fractions of the frame size."""

    target_half_length: tuple[float, float] = (0.10, 0.16)
    aspect: tuple[float, float] = (0.45, 0.65)       # half-width / half-length: elongated, so
                                                     # rotation shows in the mask's moments
    class_shift: tuple[float, float] = (0.16, 0.22)  # move_*: total displacement
    class_turn: tuple[float, float] = (1.2, 1.9)     # rotate_*: radians in total (69-109 deg)
    class_growth: tuple[float, float] = (1.5, 1.75)  # grow: scale factor; shrink: its inverse
    nuisance_drift: float = 0.025                    # every class: per-axis drift up to this
    nuisance_turn: float = 0.15                      # every class: rotation up to +-this
    nuisance_scale: float = 1.07                     # every class: scale in [1/this, this]
    distractor_half_length: tuple[float, float] = (0.05, 0.09)
    distractor_shift: float = 0.3
    distractor_wobble: float = 0.06
    distractor_turn: float = 1.5
    background_drift: tuple[float, float] = (0.02, 0.08)
    # every RGB channel of both colours of a texture; apart, so every object pixel is brighter than
    # every background pixel in every channel (shapes stand out without telling the class)
    object_colors: tuple[float, float] = (160.0, 255.0)
    background_colors: tuple[float, float] = (0.0, 60.0)
    object_frequency: tuple[float, float] = (1.0, 2.5)      # texture cycles per half-length
    background_frequency: tuple[float, float] = (2.0, 6.0)  # texture cycles per frame

    def validate(self, size: int) -> None:
        """ValueError("<field>: ...") where a video of `size` px could not be drawn as documented."""
        for f in fields(self):
            value = getattr(self, f.name)
            low, high = value if isinstance(value, tuple) else (0, value)
            if not 0 <= low <= high:
                raise ValueError(f"{f.name}: must be >= 0 with low <= high, got {value!r}")
        for name in ("object_colors", "background_colors"):
            if getattr(self, name)[1] > 255:
                raise ValueError(f"{name}: must lie in [0, 255], got {getattr(self, name)!r}")
        if self.nuisance_scale < 1:
            raise ValueError(f"nuisance_scale: must be >= 1, got {self.nuisance_scale}")
        radius = max(circumradius(shape, self.aspect[1]) for shape in SHAPES)
        extent = self.target_half_length[1] * radius * self.nuisance_scale
        reach = max(extent * self.class_growth[1], extent + self.class_shift[1]) + self.nuisance_drift + 1 / size
        if reach >= 0.5:
            raise ValueError(f"class_shift: with target_half_length {self.target_half_length} the target can "
                             f"leave a {size} px frame (needs {reach:.2f} of the frame each side of its start)")


RANGES = DrawingRanges()
NOISE_GRID = 16   # value-noise lattice; it wraps, so textures tile forever

# Polygon corners in object units (half-length 1 along u, half-width `aspect` along v), centroid
# at the origin so that rotating or scaling about the centre leaves the mask centroid in place.
_CORNERS = {
    "rectangle": lambda a: [(1, a), (-1, a), (-1, -a), (1, -a)],
    "triangle": lambda a: [(1, 0), (-0.5, a), (-0.5, -a)],
    "diamond": lambda a: [(1, 0), (0, a), (-1, 0), (0, -a)],
}


@dataclass(frozen=True)
class Texture:
    """Two colours mixed by a pattern evaluated in the coordinates of whatever wears it."""

    pattern: str
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]
    frequency: float      # cycles per coordinate unit
    angle: float          # stripe direction
    phase: float          # in cycles
    noise_seed: int


@dataclass(frozen=True)
class Sprite:
    """A textured shape: pose at t=0 plus its total, linear change over the clip."""

    shape: str
    aspect: float
    texture: Texture
    half_length: float                 # px at t=0
    center: tuple[float, float]        # px at t=0
    angle: float                       # t=0; increasing = clockwise on screen (y points down)
    shift: tuple[float, float] = (0.0, 0.0)
    turn: float = 0.0
    log_scale: float = 0.0
    wobble: tuple[float, float] = (0.0, 0.0)   # px amplitude of a sinusoidal path offset
    wobble_cycles: float = 0.0
    wobble_phase: float = 0.0


@dataclass(frozen=True)
class VideoParams:
    """Everything needed to render one video; `label` only picks which class motion applies."""

    label: int
    num_frames: int
    size: int
    background: Texture
    background_shift: tuple[float, float]
    target: Sprite                     # pose + nuisance motion, no class motion
    class_shift: float
    class_turn: float
    class_log_growth: float
    distractors: tuple[Sprite, ...]


def _texture(rng: np.random.Generator, frequency: tuple[float, float], colors: tuple[float, float]) -> Texture:
    low, high = colors
    a, b = (tuple(float(c) for c in rng.uniform(low, high, 3)) for _ in range(2))
    return Texture(pattern=PATTERNS[rng.integers(len(PATTERNS))], color_a=a, color_b=b,
                   frequency=float(rng.uniform(*frequency)), angle=float(rng.uniform(0, math.pi)),
                   phase=float(rng.uniform(0, 1)), noise_seed=int(rng.integers(2**31)))


def _shape(rng: np.random.Generator, ranges: DrawingRanges) -> tuple[str, float, Texture]:
    return (SHAPES[rng.integers(len(SHAPES))], float(rng.uniform(*ranges.aspect)),
            _texture(rng, ranges.object_frequency, ranges.object_colors))


def circumradius(shape: str, aspect: float) -> float:
    """Largest distance from the centre to the outline, in half-lengths."""
    if shape == "ellipse":
        return 1.0
    return max(math.hypot(u, v) for u, v in _CORNERS[shape](aspect))


def sample_params(seed: int, index: int, num_frames: int, size: int,
                  ranges: DrawingRanges = RANGES) -> VideoParams:
    """Draw video `index` of the dataset with `seed`; the label is `index % len(CLASSES)`."""
    rng = np.random.default_rng([seed, index])
    background = _texture(rng, ranges.background_frequency, ranges.background_colors)
    drift_angle = rng.uniform(0, 2 * math.pi)
    drift = rng.uniform(*ranges.background_drift) * size
    shape, aspect, texture = _shape(rng, ranges)
    half_length = rng.uniform(*ranges.target_half_length) * size
    angle = rng.uniform(0, 2 * math.pi)
    nuisance_shift = rng.uniform(-ranges.nuisance_drift, ranges.nuisance_drift, 2) * size
    nuisance_turn = rng.uniform(-ranges.nuisance_turn, ranges.nuisance_turn)
    nuisance_log_scale = rng.uniform(-1.0, 1.0) * math.log(ranges.nuisance_scale)
    class_shift = rng.uniform(*ranges.class_shift) * size
    class_turn = rng.uniform(*ranges.class_turn)
    class_log_growth = math.log(rng.uniform(*ranges.class_growth))
    # Room needed on every side for the most demanding class, so the start does not depend on it.
    extent = half_length * circumradius(shape, aspect) * ranges.nuisance_scale
    margin = max(extent * math.exp(class_log_growth), extent + class_shift) + ranges.nuisance_drift * size + 1
    center = tuple(float(c) for c in rng.uniform(margin, size - margin, 2))
    target = Sprite(shape, aspect, texture, float(half_length), center, float(angle),
                    shift=(float(nuisance_shift[0]), float(nuisance_shift[1])),
                    turn=float(nuisance_turn), log_scale=float(nuisance_log_scale))
    distractors = []
    for _ in range(int(rng.integers(1, 3))):
        d_shape, d_aspect, d_texture = _shape(rng, ranges)
        shift = rng.uniform(-ranges.distractor_shift, ranges.distractor_shift, 2) * size
        wobble = rng.uniform(-ranges.distractor_wobble, ranges.distractor_wobble, 2) * size
        distractors.append(Sprite(
            d_shape, d_aspect, d_texture, float(rng.uniform(*ranges.distractor_half_length) * size),
            tuple(float(c) for c in rng.uniform(0, size, 2)), float(rng.uniform(0, 2 * math.pi)),
            shift=(float(shift[0]), float(shift[1])),
            turn=float(rng.uniform(-ranges.distractor_turn, ranges.distractor_turn)),
            wobble=(float(wobble[0]), float(wobble[1])), wobble_cycles=float(rng.uniform(0.5, 2.0)),
            wobble_phase=float(rng.uniform(0, 2 * math.pi))))
    return VideoParams(label=index % len(CLASSES), num_frames=num_frames, size=size,
                       background=background,
                       background_shift=(drift * math.cos(drift_angle), drift * math.sin(drift_angle)),
                       target=target, class_shift=float(class_shift), class_turn=float(class_turn),
                       class_log_growth=float(class_log_growth), distractors=tuple(distractors))


def labelled_target(params: VideoParams) -> Sprite:
    """The target sprite with the motion of its class added to the nuisance motion."""
    name, t = CLASSES[params.label], params.target
    direction = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}
    dx, dy = direction.get(name, (0, 0))
    turn = {"rotate_cw": 1.0, "rotate_ccw": -1.0}.get(name, 0.0) * params.class_turn
    growth = {"grow": 1.0, "shrink": -1.0}.get(name, 0.0) * params.class_log_growth
    return replace(t, shift=(t.shift[0] + dx * params.class_shift, t.shift[1] + dy * params.class_shift),
                   turn=t.turn + turn, log_scale=t.log_scale + growth)


def sprite_pose(sprite: Sprite, progress: float) -> tuple[float, float, float, float]:
    """(centre x, centre y, angle, half-length) at `progress` in [0, 1] through the clip."""
    cycle = 2 * math.pi * sprite.wobble_cycles * progress
    wave = math.sin(cycle + sprite.wobble_phase) - math.sin(sprite.wobble_phase)
    x = sprite.center[0] + sprite.shift[0] * progress + sprite.wobble[0] * wave
    y = sprite.center[1] + sprite.shift[1] * progress + sprite.wobble[1] * wave
    return x, y, sprite.angle + sprite.turn * progress, sprite.half_length * math.exp(sprite.log_scale * progress)


@functools.lru_cache(maxsize=256)
def _noise_lattice(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((NOISE_GRID, NOISE_GRID), dtype=np.float32)


def _value_noise(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Smooth noise in [0, 1] on a wrapping lattice (one cell per unit of x, y)."""
    lattice = _noise_lattice(seed)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    ix, iy = x0.astype(np.int64) % NOISE_GRID, y0.astype(np.int64) % NOISE_GRID
    jx, jy = (ix + 1) % NOISE_GRID, (iy + 1) % NOISE_GRID
    top = lattice[iy, ix] * (1 - fx) + lattice[iy, jx] * fx
    bottom = lattice[jy, ix] * (1 - fx) + lattice[jy, jx] * fx
    return top * (1 - fy) + bottom * fy


@functools.lru_cache(maxsize=256)
def _colour_ramp(color_a: tuple[float, ...], color_b: tuple[float, ...]) -> np.ndarray:
    """(256, 3) uint8: colour_a blended towards colour_b in 256 steps."""
    steps = np.linspace(0, 1, 256, dtype=np.float32)[:, None]
    a, b = np.asarray(color_a, np.float32), np.asarray(color_b, np.float32)
    return np.rint(a + (b - a) * steps).astype(np.uint8)


def texture_mix(texture: Texture, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The pattern in [0, 1] at coordinates (u, v): 0 = color_a, 1 = color_b."""
    f = texture.frequency
    if texture.pattern == "stripes":
        along = u * math.cos(texture.angle) + v * math.sin(texture.angle)
        return np.clip(0.5 + 1.5 * np.sin(2 * math.pi * (f * along + texture.phase)), 0, 1)
    if texture.pattern == "checker":
        return (np.floor(f * u + texture.phase) + np.floor(f * v + texture.phase)) % 2
    return 0.65 * _value_noise(2 * f * u, 2 * f * v, texture.noise_seed) + \
        0.35 * _value_noise(4 * f * u, 4 * f * v, texture.noise_seed + 1)


def texture_rgb(texture: Texture, mix: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) for pattern values `mix` (a lookup per pixel, not RGB arithmetic)."""
    return np.take(_colour_ramp(texture.color_a, texture.color_b), np.rint(mix * 255).astype(np.uint8), axis=0)


def background_frames(params: VideoParams) -> np.ndarray:
    """(T, H, W, 3) uint8: the background texture translated by `background_shift` over the clip.

    The pattern is evaluated once on a canvas that covers every frame's view; each frame is a
    bilinear sub-pixel crop of it (a uniform shift needs four slices, no per-pixel lookups).
    """
    size, count = params.size, params.num_frames
    offsets = -np.outer(np.arange(count) / (count - 1), params.background_shift)   # (T, [x, y]) px
    low = np.floor(offsets.min(0))
    extent = size + int(np.ceil((offsets - low).max())) + 2
    axes = [(np.arange(extent, dtype=np.float32) + 0.5 + low[k]) / size for k in (0, 1)]
    canvas = texture_mix(params.background, axes[0][None, :], axes[1][:, None]).astype(np.float32)
    mixes = np.empty((count, size, size), np.float32)
    for t, (dx, dy) in enumerate(offsets - low):
        ix, iy = int(dx), int(dy)
        fx, fy = np.float32(dx - ix), np.float32(dy - iy)
        rows = canvas[iy:iy + size + 1]
        cols = rows[:, ix:ix + size] * (1 - fx) + rows[:, ix + 1:ix + size + 1] * fx
        mixes[t] = cols[:-1] * (1 - fy) + cols[1:] * fy
    return texture_rgb(params.background, mixes)


def _inside(shape: str, aspect: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "ellipse":
        return u * u + (v / aspect) ** 2 <= 1
    if shape == "rectangle":
        return (np.abs(u) <= 1) & (np.abs(v) <= aspect)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) / aspect <= 1
    return (u >= -0.5) & (np.abs(v) <= aspect * (1 - u) / 1.5)   # triangle, apex at u = 1


def draw_sprite(image: np.ndarray, sprite: Sprite, progress: float) -> np.ndarray:
    """Paint `sprite` into image (H, W, 3) in place; return its bool mask (H, W)."""
    height, width = image.shape[:2]
    cx, cy, angle, half_length = sprite_pose(sprite, progress)
    reach = half_length * circumradius(sprite.shape, sprite.aspect) + 1
    x0, x1 = max(0, math.floor(cx - reach)), min(width, math.ceil(cx + reach))
    y0, y1 = max(0, math.floor(cy - reach)), min(height, math.ceil(cy + reach))
    mask = np.zeros((height, width), bool)
    if x0 >= x1 or y0 >= y1:
        return mask
    dx = (np.arange(x0, x1, dtype=np.float32) + np.float32(0.5 - cx))[None, :]   # pixel centres
    dy = (np.arange(y0, y1, dtype=np.float32) + np.float32(0.5 - cy))[:, None]
    cos, sin = math.cos(angle), math.sin(angle)
    u = (dx * cos + dy * sin) / half_length
    v = (dy * cos - dx * sin) / half_length
    inside = _inside(sprite.shape, sprite.aspect, u, v)
    window = image[y0:y1, x0:x1]
    window[inside] = texture_rgb(sprite.texture, texture_mix(sprite.texture, u[inside], v[inside]))
    mask[y0:y1, x0:x1] = inside
    return mask


def sprite_box(sprite: Sprite, progress: float, width: int, height: int) -> tuple[float, ...]:
    """Exact xyxy bounds of the continuous shape at `progress`, clipped to the frame."""
    cx, cy, angle, half_length = sprite_pose(sprite, progress)
    cos, sin = math.cos(angle), math.sin(angle)
    if sprite.shape == "ellipse":
        a = sprite.aspect
        ex = half_length * math.hypot(cos, a * sin)
        ey = half_length * math.hypot(sin, a * cos)
        xs, ys = (cx - ex, cx + ex), (cy - ey, cy + ey)
    else:
        corners = _CORNERS[sprite.shape](sprite.aspect)
        xs = [cx + half_length * (u * cos - v * sin) for u, v in corners]
        ys = [cy + half_length * (u * sin + v * cos) for u, v in corners]
    return (min(max(min(xs), 0.0), width), min(max(min(ys), 0.0), height),
            min(max(max(xs), 0.0), width), min(max(max(ys), 0.0), height))


def render_video(params: VideoParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """frames (T, H, W, 3) uint8, target boxes (T, 4) float32 xyxy, target masks (T, H, W) uint8."""
    size, count = params.size, params.num_frames
    frames = background_frames(params)
    masks = np.empty((count, size, size), np.uint8)
    boxes = np.empty((count, 4), np.float32)
    target = labelled_target(params)
    for t, image in enumerate(frames):
        for distractor in params.distractors:
            draw_sprite(image, distractor, t / (count - 1))
        masks[t] = draw_sprite(image, target, t / (count - 1))
        boxes[t] = sprite_box(target, t / (count - 1), size, size)
    return frames, boxes, masks
