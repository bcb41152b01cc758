"""Deterministic fundus-like photos whose lesions follow the international DR scale.

Pure NumPy + Pillow, no TensorFlow: `render(seed, grade)` returns an `uint8 [H, W, 3]` photo in one
of the three APTOS framings (full circle, circle cut at top and bottom, rectangle without border);
`render_with_mask(seed, grade)` returns the same photo (bit for bit: the mask draws no random
numbers) and a `bool [H, W]` mask of every lesion pixel (microaneurysms, haemorrhages, exudates,
new vessels, pre-retinal haemorrhage), the ground truth that explanation maps are scored against.

Grades (international clinical DR scale):
  0 none; 1 a few microaneurysms; 2 more microaneurysms + dot/blot haemorrhages + hard exudates;
  3 many haemorrhages in all four quadrants (+ venous beading); 4 neovascularisation and/or
  pre-retinal haemorrhage.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

FRAMINGS = ("full", "cut", "rect")
GRADE_FREQUENCIES = (0.49, 0.10, 0.27, 0.05, 0.09)  # APTOS 2019: 1805/370/999/193/295


def sample_grade(rng: np.random.Generator) -> int:
    """Draws a grade with the APTOS frequencies."""
    p = np.asarray(GRADE_FREQUENCIES) / np.sum(GRADE_FREQUENCIES)
    return int(rng.choice(5, p=p))


def _ellipse(draw, cx, cy, r, fill, ry=None):
    ry = r if ry is None else ry
    draw.ellipse([cx - r, cy - ry, cx + r, cy + ry], fill=fill)


def _point_in_fundus(
    rng, cx, cy, radius, width, height, min_frac=0.15, max_frac=0.85, quadrant=None
):
    for _ in range(100):
        ang = (
            rng.uniform(0, 2 * math.pi)
            if quadrant is None
            else rng.uniform(quadrant * math.pi / 2, (quadrant + 1) * math.pi / 2)
        )
        rad = radius * math.sqrt(rng.uniform(min_frac**2, max_frac**2))
        x, y = cx + rad * math.cos(ang), cy + rad * math.sin(ang)
        if 2 <= x < width - 2 and 2 <= y < height - 2:
            return x, y
    return cx, cy


def _vessel(draw, rng, x, y, angle, length, width, colour, steps=18, wiggle=0.25):
    points = [(x, y)]
    step = length / steps
    for _ in range(steps):
        angle += rng.normal(0, wiggle)
        x += step * math.cos(angle)
        y += step * math.sin(angle)
        points.append((x, y))
    draw.line(points, fill=colour, width=max(1, int(round(width))), joint="curve")
    return points


def render(seed: int, grade: int, base_size: int = 384) -> tuple[np.ndarray, str]:
    """Renders one synthetic fundus photo.

    Args:
        seed: int. Everything about the photo follows from it.
        grade: int. DR grade 0-4; decides the lesions.
        base_size: int. Approximate width of the photo in pixels. Defaults to 384.

    Returns:
        `(image uint8 [H, W, 3], framing)`.
    """
    image, framing, _ = render_with_mask(seed, grade, base_size)
    return image, framing


def render_with_mask(
    seed: int, grade: int, base_size: int = 384
) -> tuple[np.ndarray, str, np.ndarray]:
    """Renders one synthetic fundus photo and the mask of its lesions.

    The photo is identical to `render(seed, grade, base_size)`. Lesions are drawn into the mask
    with the same shapes and sizes as into the photo, before the photo's final blur and noise;
    pixels outside the fundus circle are cleared as in the photo. Grade 0 has an empty mask.

    Args:
        seed: int. Everything about the photo follows from it.
        grade: int. DR grade 0-4; decides the lesions.
        base_size: int. Approximate width of the photo in pixels. Defaults to 384.

    Returns:
        `(image uint8 [H, W, 3], framing, lesion_mask bool [H, W])`, mask in the photo's frame.
    """
    rng = np.random.default_rng(seed)
    framing = FRAMINGS[int(rng.choice(3, p=[0.5, 0.35, 0.15]))]
    width = int(base_size * rng.uniform(0.85, 1.15))
    height = int(width * rng.choice([0.75, 0.667, 1.0], p=[0.6, 0.25, 0.15]))
    if framing == "full":
        radius = 0.5 * min(width, height) * rng.uniform(0.82, 0.97)
    elif framing == "cut":
        height = int(width * 0.75)
        radius = 0.5 * height * rng.uniform(1.12, 1.3)
    else:
        radius = 0.5 * math.hypot(width, height) * rng.uniform(1.02, 1.1)
    cx = width / 2 + rng.normal(0, width * 0.01)
    cy = height / 2 + rng.normal(0, height * 0.01)

    # Background colour: orange-red with a random cast and brightness.
    brightness = rng.uniform(0.55, 1.15)
    base = np.array([rng.uniform(170, 235), rng.uniform(55, 110), rng.uniform(15, 55)])
    base = base * brightness * rng.uniform(0.9, 1.1, size=3)

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / radius
    vignette = np.clip(1.0 - 0.45 * dist**2, 0.0, 1.0)[..., None]
    img = base[None, None, :] * (0.55 + 0.45 * vignette)

    # Optic disc (bright, yellowish) and macula (darker), on opposite sides of the centre.
    side = 1 if rng.random() < 0.5 else -1
    disc = (cx + side * radius * rng.uniform(0.3, 0.4), cy + rng.normal(0, radius * 0.04))
    macula = (cx - side * radius * rng.uniform(0.05, 0.12), cy + rng.normal(0, radius * 0.03))
    disc_r = radius * rng.uniform(0.08, 0.11)
    d_disc = np.sqrt((xx - disc[0]) ** 2 + (yy - disc[1]) ** 2) / disc_r
    img += (np.clip(1.2 - d_disc, 0, 1) ** 0.7)[..., None] * np.array([70, 85, 60]) * brightness
    d_mac = np.sqrt((xx - macula[0]) ** 2 + (yy - macula[1]) ** 2) / (radius * 0.16)
    img *= 1.0 - 0.35 * np.exp(-(d_mac**2))[..., None]
    img = np.clip(img, 0, 255)

    pil = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    mask_pil = Image.new("L", pil.size, 0)
    mask_draw = ImageDraw.Draw(mask_pil)
    vessel_colour = tuple(int(v) for v in np.clip(base * np.array([0.62, 0.35, 0.45]), 0, 255))
    # Vessels: four arcades leaving the disc, with branches.
    for k in range(4):
        angle = (-1 if k < 2 else 1) * rng.uniform(0.3, 1.2) + (math.pi if side > 0 else 0.0)
        angle += side * (0.4 if k % 2 else -0.4)
        width_px = radius * rng.uniform(0.012, 0.022)
        pts = _vessel(
            draw, rng, *disc, angle, radius * rng.uniform(0.9, 1.4), width_px, vessel_colour
        )
        for _ in range(3):
            x, y = pts[int(rng.integers(4, len(pts)))]
            _vessel(
                draw,
                rng,
                x,
                y,
                angle + rng.normal(0, 0.9),
                radius * rng.uniform(0.2, 0.5),
                width_px * 0.6,
                vessel_colour,
                steps=8,
                wiggle=0.35,
            )

    lesion_scale = radius / 180.0
    ma_colour = tuple(int(v) for v in np.clip(base * np.array([0.55, 0.18, 0.25]), 0, 255))
    haem_colour = tuple(int(v) for v in np.clip(base * np.array([0.45, 0.15, 0.2]), 0, 255))
    exudate_colour = (
        int(min(255, 235 * brightness + 20)),
        int(min(255, 215 * brightness + 10)),
        int(90 * brightness),
    )

    def microaneurysms(n):
        for _ in range(n):
            x, y = _point_in_fundus(rng, cx, cy, radius, width, height)
            r = rng.uniform(2.2, 3.4) * lesion_scale
            _ellipse(draw, x, y, r, ma_colour)
            _ellipse(mask_draw, x, y, r, 255)

    def haemorrhages(n, quadrants=False, size=(4.5, 8.0)):
        for i in range(n):
            q = (i % 4) if quadrants else None
            x, y = _point_in_fundus(rng, cx, cy, radius, width, height, quadrant=q)
            r = rng.uniform(*size) * lesion_scale
            ry = r * rng.uniform(0.6, 1.2)
            _ellipse(draw, x, y, r, haem_colour, ry=ry)
            _ellipse(mask_draw, x, y, r, 255, ry=ry)

    def exudates(n):
        x0, y0 = _point_in_fundus(rng, cx, cy, radius, width, height, 0.15, 0.6)
        for _ in range(n):
            x = x0 + rng.normal(0, radius * 0.08)
            y = y0 + rng.normal(0, radius * 0.08)
            r = rng.uniform(1.8, 3.2) * lesion_scale
            _ellipse(draw, x, y, r, exudate_colour)
            _ellipse(mask_draw, x, y, r, 255)

    if grade == 1:
        microaneurysms(int(rng.integers(2, 6)))
    elif grade == 2:
        microaneurysms(int(rng.integers(6, 14)))
        haemorrhages(int(rng.integers(2, 6)))
        exudates(int(rng.integers(4, 12)))
    elif grade == 3:
        microaneurysms(int(rng.integers(8, 16)))
        haemorrhages(int(rng.integers(16, 28)), quadrants=True, size=(5.0, 9.5))
        exudates(int(rng.integers(6, 16)))
    elif grade == 4:
        microaneurysms(int(rng.integers(6, 14)))
        haemorrhages(int(rng.integers(4, 14)), quadrants=True)
        exudates(int(rng.integers(2, 10)))
        if rng.random() < 0.75:  # neovascularisation: a tangle of fine, wiggly new vessels
            nx, ny = (
                disc if rng.random() < 0.6 else _point_in_fundus(rng, cx, cy, radius, width, height)
            )
            for _ in range(int(rng.integers(8, 16))):
                new_width = max(1.0, 1.6 * lesion_scale)
                points = _vessel(
                    draw,
                    rng,
                    nx,
                    ny,
                    rng.uniform(0, 2 * math.pi),
                    radius * rng.uniform(0.1, 0.25),
                    new_width,
                    vessel_colour,
                    steps=10,
                    wiggle=0.9,
                )
                mask_draw.line(points, fill=255, width=int(round(new_width)), joint="curve")
        if rng.random() < 0.6:  # pre-retinal (boat-shaped) haemorrhage
            x, y = _point_in_fundus(rng, cx, cy, radius, width, height, 0.3, 0.7)
            r = radius * rng.uniform(0.1, 0.16)
            draw.chord([x - r, y - r, x + r, y + r], 0, 180, fill=haem_colour)
            mask_draw.chord([x - r, y - r, x + r, y + r], 0, 180, fill=255)

    pil = pil.filter(ImageFilter.GaussianBlur(radius=0.6 * lesion_scale))
    out = np.asarray(pil).astype(np.float32)
    out += rng.normal(0, 3.0, size=out.shape)
    lesion_mask = np.asarray(mask_pil) > 0
    if framing != "rect":
        out *= (dist <= 1.0)[..., None]
        lesion_mask &= dist <= 1.0
    return np.clip(out, 0, 255).astype(np.uint8), framing, lesion_mask
