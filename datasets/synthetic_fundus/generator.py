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

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class _Eye:
    """Where the fundus sits in the photo and how it looks: what every drawing step reads.

    Attributes:
        framing: str. One of `FRAMINGS`.
        width, height: int. Photo size in pixels.
        radius, cx, cy: float. The fundus circle (pixels).
        brightness: float. Overall brightness factor.
        base: `float64 [3]`. The background RGB colour.
        side: int. +1 when the optic disc is right of the centre, else -1.
        disc, macula: `(x, y)` centres in pixels; disc_r: the optic disc radius.
    """

    framing: str
    width: int
    height: int
    radius: float
    cx: float
    cy: float
    brightness: float
    base: np.ndarray
    side: int
    disc: tuple[float, float]
    macula: tuple[float, float]
    disc_r: float

    def colour(self, factors) -> tuple[int, int, int]:
        """The background colour scaled per channel, as a PIL fill."""
        return tuple(int(v) for v in np.clip(self.base * np.array(factors), 0, 255))

    def point(self, rng, min_frac=0.15, max_frac=0.85, quadrant=None) -> tuple[float, float]:
        """A random point of the fundus between `min_frac` and `max_frac` of the radius, in the
        photo (2 px from its edge), optionally in one `quadrant` (0-3); the centre after 100 tries.
        """
        for _ in range(100):
            ang = (
                rng.uniform(0, 2 * math.pi)
                if quadrant is None
                else rng.uniform(quadrant * math.pi / 2, (quadrant + 1) * math.pi / 2)
            )
            rad = self.radius * math.sqrt(rng.uniform(min_frac**2, max_frac**2))
            x, y = self.cx + rad * math.cos(ang), self.cy + rad * math.sin(ang)
            if 2 <= x < self.width - 2 and 2 <= y < self.height - 2:
                return x, y
        return self.cx, self.cy


def _sample_eye(rng: np.random.Generator, base_size: int) -> _Eye:
    """Step 1: framing, size, fundus circle, colour, optic disc and macula (in this draw order)."""
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
    # Optic disc (bright, yellowish) and macula (darker), on opposite sides of the centre.
    side = 1 if rng.random() < 0.5 else -1
    disc = (cx + side * radius * rng.uniform(0.3, 0.4), cy + rng.normal(0, radius * 0.04))
    macula = (cx - side * radius * rng.uniform(0.05, 0.12), cy + rng.normal(0, radius * 0.03))
    disc_r = radius * rng.uniform(0.08, 0.11)
    return _Eye(
        framing, width, height, radius, cx, cy, brightness, base, side, disc, macula, disc_r
    )


def _shade(eye: _Eye) -> tuple[np.ndarray, np.ndarray]:
    """Step 2 (no random numbers): vignetted background, bright disc, dark macula.

    Returns:
        `(image float [H, W, 3] in 0..255, dist float32 [H, W])`, dist being the distance to
        the fundus centre in radii.
    """
    yy, xx = np.mgrid[0 : eye.height, 0 : eye.width].astype(np.float32)
    dist = np.sqrt((xx - eye.cx) ** 2 + (yy - eye.cy) ** 2) / eye.radius
    vignette = np.clip(1.0 - 0.45 * dist**2, 0.0, 1.0)[..., None]
    img = eye.base[None, None, :] * (0.55 + 0.45 * vignette)
    d_disc = np.sqrt((xx - eye.disc[0]) ** 2 + (yy - eye.disc[1]) ** 2) / eye.disc_r
    img += (np.clip(1.2 - d_disc, 0, 1) ** 0.7)[..., None] * np.array([70, 85, 60]) * eye.brightness
    d_mac = np.sqrt((xx - eye.macula[0]) ** 2 + (yy - eye.macula[1]) ** 2) / (eye.radius * 0.16)
    img *= 1.0 - 0.35 * np.exp(-(d_mac**2))[..., None]
    return np.clip(img, 0, 255), dist


def _draw_vessels(draw, rng: np.random.Generator, eye: _Eye, colour) -> None:
    """Step 3: four arcades leaving the optic disc, three branches each."""
    for k in range(4):
        angle = (-1 if k < 2 else 1) * rng.uniform(0.3, 1.2) + (math.pi if eye.side > 0 else 0.0)
        angle += eye.side * (0.4 if k % 2 else -0.4)
        width_px = eye.radius * rng.uniform(0.012, 0.022)
        length = eye.radius * rng.uniform(0.9, 1.4)
        pts = _vessel(draw, rng, *eye.disc, angle, length, width_px, colour)
        for _ in range(3):
            x, y = pts[int(rng.integers(4, len(pts)))]
            branch_angle = angle + rng.normal(0, 0.9)
            branch_length = eye.radius * rng.uniform(0.2, 0.5)
            _vessel(draw, rng, x, y, branch_angle, branch_length, width_px * 0.6, colour, 8, 0.35)


class _Lesions:
    """Step 4: draws each kind of lesion into the photo and, with the same shapes, the mask.

    Args:
        draw: `ImageDraw` of the photo.
        mask_draw: `ImageDraw` of the `L` mask (lesions drawn as 255).
        rng: the photo's generator (the mask draws no numbers of its own).
        eye: the photo's geometry and colours.
        vessel_colour: fill of the new vessels.
    """

    def __init__(self, draw, mask_draw, rng, eye: _Eye, vessel_colour):
        self.draw, self.mask_draw, self.rng, self.eye = draw, mask_draw, rng, eye
        self.vessel_colour = vessel_colour
        self.scale = eye.radius / 180.0
        self.ma_colour = eye.colour([0.55, 0.18, 0.25])
        self.haem_colour = eye.colour([0.45, 0.15, 0.2])
        self.exudate_colour = (
            int(min(255, 235 * eye.brightness + 20)),
            int(min(255, 215 * eye.brightness + 10)),
            int(90 * eye.brightness),
        )

    def _blob(self, x, y, r, fill, ry=None) -> None:
        _ellipse(self.draw, x, y, r, fill, ry=ry)
        _ellipse(self.mask_draw, x, y, r, 255, ry=ry)

    def microaneurysms(self, n: int) -> None:
        for _ in range(n):
            x, y = self.eye.point(self.rng)
            self._blob(x, y, self.rng.uniform(2.2, 3.4) * self.scale, self.ma_colour)

    def haemorrhages(self, n: int, quadrants: bool = False, size=(4.5, 8.0)) -> None:
        for i in range(n):
            x, y = self.eye.point(self.rng, quadrant=(i % 4) if quadrants else None)
            r = self.rng.uniform(*size) * self.scale
            self._blob(x, y, r, self.haem_colour, ry=r * self.rng.uniform(0.6, 1.2))

    def exudates(self, n: int) -> None:
        x0, y0 = self.eye.point(self.rng, 0.15, 0.6)
        for _ in range(n):
            x = x0 + self.rng.normal(0, self.eye.radius * 0.08)
            y = y0 + self.rng.normal(0, self.eye.radius * 0.08)
            self._blob(x, y, self.rng.uniform(1.8, 3.2) * self.scale, self.exudate_colour)

    def new_vessels(self) -> None:
        """Neovascularisation: a tangle of fine, wiggly new vessels (at the disc or elsewhere)."""
        rng = self.rng
        nx, ny = self.eye.disc if rng.random() < 0.6 else self.eye.point(rng)
        for _ in range(int(rng.integers(8, 16))):
            new_width = max(1.0, 1.6 * self.scale)
            angle = rng.uniform(0, 2 * math.pi)
            length = self.eye.radius * rng.uniform(0.1, 0.25)
            points = _vessel(
                self.draw, rng, nx, ny, angle, length, new_width, self.vessel_colour, 10, 0.9
            )
            self.mask_draw.line(points, fill=255, width=int(round(new_width)), joint="curve")

    def preretinal_haemorrhage(self) -> None:
        """A pre-retinal (boat-shaped) haemorrhage."""
        x, y = self.eye.point(self.rng, 0.3, 0.7)
        r = self.eye.radius * self.rng.uniform(0.1, 0.16)
        box = [x - r, y - r, x + r, y + r]
        self.draw.chord(box, 0, 180, fill=self.haem_colour)
        self.mask_draw.chord(box, 0, 180, fill=255)

    def for_grade(self, grade: int) -> None:
        """The lesions of the international DR scale for `grade` (none for 0)."""
        rng = self.rng
        if grade == 1:
            self.microaneurysms(int(rng.integers(2, 6)))
        elif grade == 2:
            self.microaneurysms(int(rng.integers(6, 14)))
            self.haemorrhages(int(rng.integers(2, 6)))
            self.exudates(int(rng.integers(4, 12)))
        elif grade == 3:
            self.microaneurysms(int(rng.integers(8, 16)))
            self.haemorrhages(int(rng.integers(16, 28)), quadrants=True, size=(5.0, 9.5))
            self.exudates(int(rng.integers(6, 16)))
        elif grade == 4:
            self.microaneurysms(int(rng.integers(6, 14)))
            self.haemorrhages(int(rng.integers(4, 14)), quadrants=True)
            self.exudates(int(rng.integers(2, 10)))
            if rng.random() < 0.75:
                self.new_vessels()
            if rng.random() < 0.6:
                self.preretinal_haemorrhage()


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
    eye = _sample_eye(rng, base_size)
    img, dist = _shade(eye)
    pil = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    mask_pil = Image.new("L", pil.size, 0)
    vessel_colour = eye.colour([0.62, 0.35, 0.45])
    _draw_vessels(draw, rng, eye, vessel_colour)
    lesions = _Lesions(draw, ImageDraw.Draw(mask_pil), rng, eye, vessel_colour)
    lesions.for_grade(grade)
    # Step 5: the photo's blur and sensor noise; outside the fundus circle is black.
    pil = pil.filter(ImageFilter.GaussianBlur(radius=0.6 * lesions.scale))
    out = np.asarray(pil).astype(np.float32)
    out += rng.normal(0, 3.0, size=out.shape)
    lesion_mask = np.asarray(mask_pil) > 0
    if eye.framing != "rect":
        out *= (dist <= 1.0)[..., None]
        lesion_mask &= dist <= 1.0
    return np.clip(out, 0, 255).astype(np.uint8), eye.framing, lesion_mask
