"""Procedural sports-like scenes: the drawing half of the synthetic set.

A scene is a background texture (grass, court, ice, ...) and distractor shapes, both drawn
*independently of the class*, and one object whose shape, colour and pattern *are* the class. So a
classifier can only be right by looking at the object, and the object's box is where a faithful
explanation must point. ``placement="offcentre"`` puts the object's box wholly on one side of the
image centre (:data:`OFFCENTRE_GAP`), for the evaluation split where a map peaking at the centre misses.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw

SHAPES = ("ball", "oval ball", "puck", "shuttlecock", "racket", "bat", "ring", "dumbbell")
COLOURS = {
    "red": (210, 40, 40), "orange": (245, 140, 20), "yellow": (240, 220, 40), "lime": (150, 230, 60),
    "teal": (20, 160, 150), "blue": (40, 80, 220), "purple": (130, 50, 180), "pink": (240, 120, 190),
    "white": (245, 245, 245), "black": (25, 25, 25),
}
PATTERNS = ("plain", "striped", "dotted", "stitched")
BACKGROUNDS = ("grass", "court", "ice", "water", "track", "sand", "clay", "parquet")
DISTRACTORS = ("cone", "line", "square", "person")
SUPERSAMPLE = 2  # draw at 2x and downscale, for anti-aliased edges
# placement="offcentre": the box's near edge lies at least this fraction of the side beyond the centre line, on a
# side drawn at random. Above the pointing game's standard tolerance (15 px at 224 px: 0.067 of the side) with
# room for rounding, so a map that peaks at the centre misses every such box at that tolerance.
OFFCENTRE_GAP = 0.08
PLACEMENTS = ("anywhere", "offcentre")


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    colour: str
    pattern: str

    def describe(self) -> str:
        pattern = "" if self.pattern == "plain" else f"{self.pattern} "
        return f"{pattern}{self.colour} {self.shape}"


def class_objects(num_classes: int) -> list[ObjectSpec]:
    """The object of each class, fixed (independent of the seed).

    Chosen greedily: each new class takes the (shape, colour, pattern) combination that differs from
    every earlier class in the most attributes, then whose attribute values were used least; ties go
    to the first in enumeration order. So the default 10 classes differ pairwise in 2-3 attributes.
    """
    combos = np.array(list(itertools.product(range(len(SHAPES)), range(len(COLOURS)), range(len(PATTERNS)))))
    if not 1 <= num_classes <= len(combos):
        raise ValueError(f"num_classes={num_classes} must be in [1, {len(combos)}]")
    usage = [np.zeros(len(SHAPES), np.int64), np.zeros(len(COLOURS), np.int64), np.zeros(len(PATTERNS), np.int64)]
    min_dist = np.full(len(combos), 3)  # attributes in which each combo differs from its nearest chosen one
    available = np.ones(len(combos), dtype=bool)
    chosen = []
    for _ in range(num_classes):
        used = sum(usage[a][combos[:, a]] for a in range(3))
        score = np.where(available, min_dist * 10_000 - used, np.iinfo(np.int64).min)
        j = int(np.argmax(score))  # argmax takes the first maximum: deterministic
        chosen.append(combos[j])
        available[j] = False
        for a in range(3):
            usage[a][combos[j, a]] += 1
        min_dist = np.minimum(min_dist, (combos != combos[j]).sum(axis=1))
    colours = list(COLOURS)
    return [ObjectSpec(SHAPES[s], colours[c], PATTERNS[p]) for s, c, p in chosen]


# ----------------------------------------------------------------------------- backgrounds


def _background(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, n, 3) float32 texture in [0, 255]."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / n
    angle = rng.uniform(0, math.pi)
    u = x * math.cos(angle) + y * math.sin(angle)  # a random direction for stripes and lanes
    noise = rng.normal(0, 1, (n, n)).astype(np.float32)
    base = {
        "grass": (70, 140, 55), "court": (60, 110, 170), "ice": (215, 230, 240), "water": (40, 100, 170),
        "track": (170, 70, 50), "sand": (215, 190, 140), "clay": (190, 100, 60), "parquet": (180, 130, 80),
    }[kind]
    img = np.empty((n, n, 3), np.float32)
    img[:] = np.array(base, np.float32) * rng.uniform(0.85, 1.15)
    if kind == "grass":  # mowing stripes
        img *= (1 + 0.08 * np.sign(np.sin(u * rng.uniform(6, 12) * math.pi)))[..., None]
        img += 10 * noise[..., None]
    elif kind == "water":
        img += (18 * np.sin(u * rng.uniform(15, 30) + 3 * np.sin(y * 7)))[..., None]
    elif kind == "ice":
        img -= 6 * np.abs(noise)[..., None]
    elif kind == "sand":
        img += 14 * noise[..., None]
    elif kind == "parquet":
        plank = np.floor(u * rng.uniform(6, 10))
        img *= (0.85 + 0.3 * ((plank * 0.618) % 1.0))[..., None]
    else:
        img += 4 * noise[..., None]
    if kind in ("court", "track", "clay", "ice"):  # white court / lane lines
        period = rng.uniform(0.2, 0.45)
        line = (np.abs(((u + rng.uniform(0, 1)) % period) - period / 2) < 0.012)
        img[line] = (0.3 * img[line] + 0.7 * 245)
    return np.clip(img, 0, 255)


# ----------------------------------------------------------------------------- objects


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, s: int, fill, outline, w: int) -> None:
    """Draw ``shape`` filling an s x s canvas."""
    if shape == "ball":
        d.ellipse([w, w, s - w, s - w], fill=fill, outline=outline, width=w)
    elif shape == "oval ball":
        d.ellipse([w, s * 0.2, s - w, s * 0.8], fill=fill, outline=outline, width=w)
    elif shape == "puck":
        d.rectangle([w, s * 0.35, s - w, s * 0.6], fill=fill, outline=outline, width=w)
        d.ellipse([w, s * 0.45, s - w, s * 0.75], fill=fill, outline=outline, width=w)
        d.ellipse([w, s * 0.2, s - w, s * 0.5], fill=fill, outline=outline, width=w)
    elif shape == "shuttlecock":
        d.polygon([(s * 0.1, w), (s * 0.9, w), (s * 0.62, s * 0.7), (s * 0.38, s * 0.7)],
                  fill=fill, outline=outline, width=w)
        d.ellipse([s * 0.32, s * 0.62, s * 0.68, s - w], fill=fill, outline=outline, width=w)
    elif shape == "racket":
        d.ellipse([s * 0.2, w, s * 0.8, s * 0.62], fill=fill, outline=outline, width=w)
        d.ellipse([s * 0.3, s * 0.1, s * 0.7, s * 0.52], fill=outline)  # strung face
        d.rectangle([s * 0.45, s * 0.6, s * 0.55, s - w], fill=fill, outline=outline, width=w)
    elif shape == "bat":
        d.polygon([(s * 0.42, s - w), (s * 0.58, s - w), (s * 0.66, w), (s * 0.34, w)],
                  fill=fill, outline=outline, width=w)
    elif shape == "ring":
        d.ellipse([w, w, s - w, s - w], fill=fill, outline=outline, width=w)
        d.ellipse([s * 0.3, s * 0.3, s * 0.7, s * 0.7], fill=(0, 0, 0, 0) if len(fill) == 4 else 0,
                  outline=outline, width=w)
    elif shape == "dumbbell":
        d.rectangle([s * 0.2, s * 0.45, s * 0.8, s * 0.55], fill=fill, outline=outline, width=w)
        d.rounded_rectangle([w, s * 0.2, s * 0.25, s * 0.8], radius=s // 10, fill=fill, outline=outline, width=w)
        d.rounded_rectangle([s * 0.75, s * 0.2, s - w, s * 0.8], radius=s // 10, fill=fill, outline=outline, width=w)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _pattern_mask(pattern: str, s: int, rng: np.random.Generator) -> Image.Image:
    m = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(m)
    if pattern == "striped":
        step = s / 5
        for k in range(-6, 12):
            x = k * step
            d.polygon([(x, 0), (x + step / 2, 0), (x + step / 2 + s * 0.4, s), (x + s * 0.4, s)], fill=255)
    elif pattern == "dotted":
        r, step = s * 0.06, s / 4.5
        for i in range(6):
            for j in range(6):
                cx, cy = (i + 0.5 + 0.5 * (j % 2)) * step, (j + 0.5) * step
                d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif pattern == "stitched":
        w = max(2, s // 18)
        d.arc([-s * 0.45, s * 0.05, s * 0.45, s * 0.95], -70, 70, fill=255, width=w)
        d.arc([s * 0.55, s * 0.05, s * 1.45, s * 0.95], 110, 250, fill=255, width=w)
    return m


def _render_object(spec: ObjectSpec, s: int, rng: np.random.Generator) -> Image.Image:
    """RGBA image of the object on a transparent s x s canvas."""
    rgb = np.clip(np.array(COLOURS[spec.colour]) + rng.normal(0, 10, 3), 0, 255).astype(int)
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    contrast = (20, 20, 20) if lum > 110 else (235, 235, 235)
    w = max(2, s // 24)
    canvas = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    _draw_shape(ImageDraw.Draw(canvas), spec.shape, s, (*rgb, 255), (*contrast, 255), w)
    shape_mask = canvas.getchannel("A")
    if spec.pattern != "plain":
        pmask = ImageChops.multiply(_pattern_mask(spec.pattern, s, rng), shape_mask)
        canvas.paste(Image.new("RGBA", (s, s), (*contrast, 255)), mask=pmask)
    # Soft light from the upper left, so the object looks lit rather than pasted flat.
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    shade = 1.15 - 0.35 * np.sqrt((xx - 0.3) ** 2 + (yy - 0.3) ** 2)
    a = np.asarray(canvas).astype(np.float32)
    a[..., :3] = np.clip(a[..., :3] * shade[..., None], 0, 255)
    return Image.fromarray(a.astype(np.uint8), "RGBA")


def _draw_distractor(d: ImageDraw.ImageDraw, kind: str, n: int, rng: np.random.Generator) -> None:
    colour = tuple(int(v) for v in list(COLOURS.values())[rng.integers(len(COLOURS))])
    cx, cy = rng.uniform(0.05, 0.95, 2) * n
    r = rng.uniform(0.05, 0.12) * n
    w = max(2, n // 64)
    if kind == "cone":
        d.polygon([(cx, cy - r), (cx - r * 0.6, cy + r), (cx + r * 0.6, cy + r)], fill=colour)
    elif kind == "line":
        a = rng.uniform(0, math.pi)
        d.line([(cx - 2 * r * math.cos(a), cy - 2 * r * math.sin(a)),
                (cx + 2 * r * math.cos(a), cy + 2 * r * math.sin(a))], fill=colour, width=2 * w)
    elif kind == "square":
        a = rng.uniform(0, math.pi / 2)
        pts = [(cx + r * math.cos(a + k * math.pi / 2), cy + r * math.sin(a + k * math.pi / 2)) for k in range(4)]
        d.polygon(pts, fill=colour)
    else:  # a stick figure
        d.ellipse([cx - r * 0.3, cy - r, cx + r * 0.3, cy - r * 0.4], fill=colour)
        d.line([(cx, cy - r * 0.4), (cx, cy + r * 0.4)], fill=colour, width=w)
        d.line([(cx - r * 0.5, cy - r * 0.1), (cx + r * 0.5, cy - r * 0.1)], fill=colour, width=w)
        d.line([(cx, cy + r * 0.4), (cx - r * 0.4, cy + r)], fill=colour, width=w)
        d.line([(cx, cy + r * 0.4), (cx + r * 0.4, cy + r)], fill=colour, width=w)


def _boxes(obj: Image.Image) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """The object's box as the scene reports it (alpha > 64) and every pixel it covers at all (alpha > 0)."""
    alpha = obj.getchannel("A")
    return alpha.point(lambda v: 255 if v > 64 else 0).getbbox(), alpha.getbbox()


def _place_offcentre(obj: Image.Image, size: int, rng: np.random.Generator) -> tuple[Image.Image, int, int]:
    """``(object, x, y)``: a paste position (supersampled pixels, may be negative: the canvas's transparent
    margin may leave the frame) that puts the object's box wholly on one side of the image centre, at least
    ``ceil(OFFCENTRE_GAP * size)`` output pixels past the centre line, with every pixel of the object inside
    the frame. The side is drawn at random; along the other axis the object may be anywhere. An object too
    large to fit on that side is shrunk until it fits."""
    n = size * SUPERSAMPLE
    gap = math.ceil(OFFCENTRE_GAP * size)
    near = SUPERSAMPLE * math.ceil(size / 2 + gap)  # "after": the box starts at or beyond this (supersampled)
    far = SUPERSAMPLE * math.floor(size / 2 - gap)  # "before": the box ends at or before this
    axis, after = int(rng.integers(2)), bool(rng.integers(2))
    while True:
        box, cover = _boxes(obj)
        lo, hi = box[axis], box[axis + 2]
        c_lo, c_hi = cover[axis], cover[axis + 2]
        # The range of the canvas offset along the axis: the box past the gap, every pixel in the frame.
        first, last = (max(near - lo, -c_lo), n - c_hi) if after else (-c_lo, min(far - hi, n - c_hi))
        if first <= last:
            break
        room = (n - near) if after else far
        extent = (c_hi - lo) if after else (hi - c_lo)
        scale = min(room / extent, 0.97)
        obj = obj.resize((max(1, int(obj.width * scale)), max(1, int(obj.height * scale))), Image.BICUBIC)
    along = int(rng.integers(first, last + 1))
    other = 1 - axis
    across = int(rng.integers(-cover[other], n - cover[other + 2] + 1))
    return (obj, along, across) if axis == 0 else (obj, across, along)


@dataclass
class Scene:
    image: Image.Image  # RGB (or L when drawn as grayscale), size x size
    box: tuple[int, int, int, int]  # the object's tight box: x0, y0, x1, y1 (x1, y1 exclusive)
    background: str
    distractors: list[str]


def render_scene(spec: ObjectSpec, size: int, rng: np.random.Generator, grayscale: bool = False,
                 placement: str = "anywhere") -> Scene:
    """Draw one scene: class-independent background and distractors, then the class object.

    ``placement="anywhere"``: the object anywhere inside the frame. ``"offcentre"``: see
    :func:`_place_offcentre` (the draws before the placement are the same, so only the object's
    placement, and what is drawn from ``rng`` after it, differ)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement={placement!r} is not one of {PLACEMENTS}")
    n = size * SUPERSAMPLE
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    img = Image.fromarray(_background(background, n, rng).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    distractors = [DISTRACTORS[rng.integers(len(DISTRACTORS))] for _ in range(rng.integers(0, 4))]
    for kind in distractors:
        _draw_distractor(d, kind, n, rng)

    s = int(rng.uniform(0.32, 0.5) * n)
    obj = _render_object(spec, s, rng).rotate(rng.uniform(0, 360), resample=Image.BICUBIC, expand=True)
    if obj.width > n:  # a large object rotated near 45 degrees: shrink it back inside the frame
        obj = obj.resize((n, n), Image.BICUBIC)
    if placement == "anywhere":
        x = int(rng.integers(0, n - obj.width + 1))
        y = int(rng.integers(0, n - obj.height + 1))
    else:
        obj, x, y = _place_offcentre(obj, size, rng)
    img.paste(obj, (x, y), mask=obj)
    (bx0, by0, bx1, by1), _ = _boxes(obj)

    img = img.reduce(SUPERSAMPLE)
    # Global lighting and sensor noise, again independent of the class.
    a = np.asarray(img).astype(np.float32) * rng.uniform(0.8, 1.15) + rng.normal(0, 3, (size, size, 3))
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
    if grayscale:
        img = img.convert("L")
    box = ((x + bx0) // SUPERSAMPLE, (y + by0) // SUPERSAMPLE,
           -(-(x + bx1) // SUPERSAMPLE), -(-(y + by1) // SUPERSAMPLE))
    return Scene(img, box, background, distractors)
