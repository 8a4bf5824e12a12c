"""Procedural dermatology-like lesion images for the embedded demo (numpy + PIL only).

Why procedural: the project has no real images, yet loaders, training and evaluation need pixels whose
label is learnable and whose visible features are known. Every image is drawn from a feature profile
(knowledge/lesion_features.py) and `render_lesion` returns the feature values it actually drew, so a rationale
citing them is grounded.

How: a lesion is a `LesionSpec` (sampled features + a pattern seed). Its interior is painted in a canonical
lesion-centred canvas whose coordinates are in lesion radii, so two views of one lesion (HAM10000 re-imaged
lesions, Derm7pt clinical/dermoscopic pairs) show the same pattern; the canvas is then warped (rotation,
elongation, placement) onto a skin background drawn for the domain:
  * dermoscopic: close-up, light skin, even lighting, black dermatoscope vignette;
  * clinical: smartphone-like wider field, Fitzpatrick I-VI skin, uneven light, colour cast, blur and noise.
The two domains differ on purpose: evaluating across them is an honest distribution shift.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from skinr1_pipeline.knowledge.lesion_features import LesionFeatureProfile

DOMAINS: tuple[str, ...] = ("dermoscopic", "clinical")

# Reference colours as seen on light skin; on darker skin the renderer darkens them with the skin.
PALETTE_RGB: dict[str, tuple[int, int, int]] = {
    "light_brown": (168, 112, 72),
    "dark_brown": (98, 58, 36),
    "black": (38, 28, 27),
    "blue_grey": (96, 108, 132),
    "red": (182, 60, 64),
    "pink": (222, 146, 150),
    "white": (238, 232, 228),
    "yellow": (226, 200, 128),
    "tan": (194, 152, 102),
}
BODY_COLOURS = ("light_brown", "dark_brown", "black", "blue_grey", "tan", "pink", "red")
FITZPATRICK_SKIN: dict[int, tuple[int, int, int]] = {
    1: (240, 210, 192),
    2: (226, 184, 156),
    3: (198, 150, 112),
    4: (160, 112, 78),
    5: (112, 74, 50),
    6: (68, 46, 36),
}
_REFERENCE_SKIN = np.array(FITZPATRICK_SKIN[2], np.float32)
# Structures whose drawing shows a colour area, so that colour must be reported when the structure is drawn.
_IMPLIED_COLOUR = {
    "blue_white_veil": "blue_grey",
    "blue_grey_ovoid_nests": "blue_grey",
    "regression": "white",
    "central_white_patch": "white",
    "keratin_mass": "yellow",
    "red_lacunae": "red",
    "strawberry_pattern": "red",
}
_EXTENT = 1.6  # canonical canvas half-width, in lesion radii (room for border bumps and fuzz)
_ANGLES = 720  # border-radius lookup resolution
_MAX_PX_PER_UNIT = 36.0  # canvas resolution cap; the warp upsamples larger lesions
# Standard-normal quantiles of 256 equal-probability bins: Gaussian noise from random bytes by table lookup.
_NORMAL_QUANTILES = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], np.float32)


@dataclass(frozen=True)
class LesionSpec:
    """One lesion's sampled features; `seed` fixes its internal pattern across every view of it."""

    diagnosis: str
    asymmetry: float
    border_irregularity: float
    border_sharpness: float
    colours: tuple[str, ...]
    diameter_mm: float
    elevation: str
    vessels: str
    scale: str
    surface: str
    structures: tuple[str, ...]
    seed: int

    def features(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("seed")
        out["colours"], out["structures"] = list(self.colours), list(self.structures)
        out["colour_count"] = len(self.colours)
        for key in ("asymmetry", "border_irregularity", "border_sharpness", "diameter_mm"):
            out[key] = round(float(out[key]), 3)
        return out


def render_lesion(
    diagnosis: str,
    profile: LesionFeatureProfile,
    domain: str,
    rng: np.random.Generator,
    size: int | tuple[int, int] = 224,
    *,
    fitzpatrick: int | None = None,
) -> tuple[Image.Image, dict[str, Any]]:
    """Sample a lesion from `profile` and draw one view of it; returns (RGB image, features actually drawn)."""
    return draw_lesion(sample_lesion(diagnosis, profile, rng), domain, rng, size, fitzpatrick=fitzpatrick)


def sample_lesion(diagnosis: str, profile: LesionFeatureProfile, rng: np.random.Generator) -> LesionSpec:
    """Draw feature values inside the profile's ranges. Consumes a fixed number of draws per call."""

    def pick(options: tuple[tuple[str, float], ...]) -> str:
        weights = np.array([w for _, w in options], float)
        return options[int(rng.choice(len(options), p=weights / weights.sum()))][0]

    asym, irr, sharp = (
        float(rng.uniform(*r)) for r in (profile.asymmetry, profile.border_irregularity, profile.border_sharpness)
    )
    diameter = float(rng.uniform(*profile.diameter_mm))
    elevation, vessels, scale, surface = (
        pick(getattr(profile, f)) for f in ("elevation", "vessels", "scale", "surface")
    )
    draws = rng.random(len(profile.structures))
    structures = tuple(name for (name, p), u in zip(profile.structures, draws) if u < p)
    implied = {_IMPLIED_COLOUR[s] for s in structures if s in _IMPLIED_COLOUR}
    chosen = set(profile.colours_required) | (implied & set(profile.colours))
    count = int(rng.integers(profile.colour_count[0], profile.colour_count[1] + 1))
    spare = [c for c in profile.colours_optional if c not in chosen]
    order = rng.permutation(len(spare))
    chosen |= {spare[i] for i in order[: max(0, count - len(chosen))]}
    colours = tuple(c for c in profile.colours if c in chosen)
    return LesionSpec(
        diagnosis,
        asym,
        irr,
        sharp,
        colours,
        diameter,
        elevation,
        vessels,
        scale,
        surface,
        structures,
        int(rng.integers(0, 2**32)),
    )


def draw_lesion(
    spec: LesionSpec,
    domain: str,
    rng: np.random.Generator,
    size: int | tuple[int, int] = 224,
    *,
    fitzpatrick: int | None = None,
) -> tuple[Image.Image, dict[str, Any]]:
    """One view of `spec` in `domain`; `rng` drives only the view (placement, skin, light, camera)."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    width, height = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if fitzpatrick is not None and fitzpatrick not in FITZPATRICK_SKIN:
        raise ValueError(f"fitzpatrick must be 1-6 or None, got {fitzpatrick!r}")
    short = min(width, height)
    reach = float(np.clip((spec.diameter_mm - 2.5) / 15.5, 0.0, 1.0))
    fraction = 0.45 + 0.33 * reach + rng.normal(0.0, 0.03)  # lesion diameter / short side, dermoscopic
    theta = float(rng.uniform(0.0, 2 * math.pi))
    if domain == "dermoscopic":
        radius = fraction * short / 2
        centre = (width / 2 + rng.uniform(-0.06, 0.06) * short, height / 2 + rng.uniform(-0.06, 0.06) * short)
        fitz = None
        skin_rgb = np.array(FITZPATRICK_SKIN[int(rng.choice([1, 2, 2, 3]))], np.float32)
    else:
        radius = fraction * short / 2 * rng.uniform(0.28, 0.45)
        centre = (width / 2 + rng.uniform(-0.15, 0.15) * short, height / 2 + rng.uniform(-0.15, 0.15) * short)
        fitz = int(fitzpatrick) if fitzpatrick is not None else int(rng.integers(1, 7))
        skin_rgb = np.array(FITZPATRICK_SKIN[fitz], np.float32)
    skin_rgb = skin_rgb * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    radius = max(radius, 4.0)

    canvas = _LesionCanvas(spec, radius_px=min(radius, _MAX_PX_PER_UNIT), light_angle=-0.75 * math.pi - theta)
    layer = canvas.paint(tint=np.clip(skin_rgb / _REFERENCE_SKIN, 0.25, 1.1) ** 0.6)
    optics = _Optics.sample(rng, width, height, domain)
    image = _background(rng, width, height, skin_rgb, optics, domain)
    lesion_px = _warp_onto(
        image, layer, canvas.support(), canvas.px_per_unit, radius, theta, canvas.elongation, centre, optics
    )
    hair = rng.random() < (0.25 if domain == "dermoscopic" else 0.15)
    picture = _add_hair(image, rng, skin_rgb * optics.cast) if hair else Image.fromarray(image)
    picture = optics.finish(picture, rng)
    features = spec.features()
    features.update(
        domain=domain,
        fitzpatrick=fitz,
        lesion_area_fraction=round(lesion_px / (width * height), 4),
        lesion_diameter_px=round(2 * radius, 1),
        skin_rgb=[int(round(c)) for c in skin_rgb],
        hair=bool(hair),
        image_size=[width, height],
    )
    return picture, features


# --------------------------------------------------------------------------------------------- lesion canvas


class _LesionCanvas:
    """Paints a lesion in lesion-centred coordinates (u, v in lesion radii) at `px_per_unit` resolution."""

    def __init__(self, spec: LesionSpec, radius_px: float, light_angle: float) -> None:
        self.spec = spec
        self.px_per_unit = max(float(radius_px), 10.0)
        self.size = int(2 * math.ceil(_EXTENT * self.px_per_unit))
        self.light = np.array([math.cos(light_angle), math.sin(light_angle)], np.float32)
        axis = (np.arange(self.size, dtype=np.float32) + 0.5 - self.size / 2) / self.px_per_unit
        self.u, self.v = axis[None, :], axis[:, None]
        shape_rng = self.rng("shape")
        a, b = spec.asymmetry, spec.border_irregularity
        self.elongation = float(1.0 + 0.35 * a * shape_rng.random() + 0.12 * shape_rng.random())
        # Border radius as a function of angle: low harmonics make it asymmetric, high ones irregular.
        ks = np.arange(1, 15)
        amps = np.where(
            ks <= 3,
            a * np.array([0.10, 0.16, 0.09] + [0] * 11) * shape_rng.uniform(0.6, 1, 14),
            b * 0.2 / ks**0.85 * shape_rng.uniform(0.3, 1, 14),
        )
        phases = shape_rng.uniform(0, 2 * math.pi, 14)
        angles = np.linspace(-math.pi, math.pi, _ANGLES + 1)
        border = 1.0 + (amps[:, None] * np.cos(ks[:, None] * angles + phases[:, None])).sum(0)
        border = np.clip(border, 0.45, _EXTENT - 0.25).astype(np.float32)
        rho = np.sqrt(self.u**2 + self.v**2)
        slot = ((np.arctan2(self.v, self.u) + math.pi) * (_ANGLES / (2 * math.pi))).astype(np.int32)
        fuzz = self.noise("border", 7.0) - np.float32(0.5)
        self.d = rho / border[slot] + np.float32(b * 0.12) * fuzz
        width = 0.03 + (1.0 - spec.border_sharpness) * 0.42
        self.alpha = _smoothstep(0.5 + (1.0 - self.d) / width)
        self.inside = _smoothstep((1.0 - self.d) / 0.12)  # interior structures fade out before the border
        shift = shape_rng.normal(0, 1, 2) * 0.35 * a  # asymmetric lesions keep their darkest part off-centre
        self.d_offset = np.sqrt((self.u - shift[0]) ** 2 + (self.v - shift[1]) ** 2).astype(np.float32)

    # ---- random sources: one stream per component so adding one never reshuffles the others
    def rng(self, name: str) -> np.random.Generator:
        return np.random.default_rng([self.spec.seed, zlib.crc32(name.encode())])

    def noise(self, name: str, frequency: float) -> np.ndarray:
        """Smooth value noise in [0, 1], `frequency` cycles per lesion radius, resolution-independent."""
        nodes = max(2, int(round(2 * _EXTENT * frequency))) + 1
        grid = self.rng(name).random((nodes, nodes), dtype=np.float32)
        field = np.asarray(Image.fromarray(grid, "F").resize((self.size, self.size), Image.BICUBIC))
        return np.clip(field, 0.0, 1.0)

    def cells(self, name: str, cell_units: float, stretch: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Jittered-grid cellular noise: (F1, F2, per-cell random value), distances in lesion units."""
        c = max(2, int(round(cell_units * self.px_per_unit)))
        blocks = (self.size + c - 1) // c
        # The lattice is drawn at a size fixed in lesion units and cropped, so every view of a lesion (at any
        # resolution) sees the same cells.
        fixed = int(math.ceil(3 * _EXTENT / cell_units)) + 4
        r = self.rng(name)
        jx, jy, val = (r.random((fixed, fixed), dtype=np.float32) for _ in range(3))
        if blocks + 2 > fixed:  # only for canvases too small to show cells anyway
            jx, jy, val = (np.pad(a, (0, blocks + 2 - fixed), mode="wrap") for a in (jx, jy, val))
        local = (np.arange(self.size, dtype=np.float32) % c) / c
        lx, ly = local[None, :], local[:, None] * stretch
        f1 = np.full((self.size, self.size), 9.0, np.float32)
        f2 = f1.copy()
        cell_val = np.zeros_like(f1)
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                sl = (slice(1 + di, 1 + di + blocks), slice(1 + dj, 1 + dj + blocks))
                px = _expand(jx[sl], c, self.size) + dj
                py = (_expand(jy[sl], c, self.size) + di) * stretch
                dist = (lx - px) ** 2 + (ly - py) ** 2
                closer = dist < f1
                f2 = np.where(closer, f1, np.minimum(f2, dist))
                cell_val = np.where(closer, _expand(val[sl], c, self.size), cell_val)
                f1 = np.minimum(f1, dist)
        scale = c / self.px_per_unit
        return np.sqrt(f1) * scale, np.sqrt(f2) * scale, cell_val

    def support(self) -> tuple[float, float, float, float]:
        """(u_min, u_max, v_min, v_max) of the visible lesion, so the warp touches only those pixels."""
        cols = np.flatnonzero(self.alpha.max(axis=0) > 0.003)
        rows = np.flatnonzero(self.alpha.max(axis=1) > 0.003)
        if not cols.size:
            return (0.0, 0.0, 0.0, 0.0)
        half, unit = self.size / 2, self.px_per_unit
        return (
            (cols[0] - half) / unit,
            (cols[-1] + 1 - half) / unit,
            (rows[0] - half) / unit,
            (rows[-1] + 1 - half) / unit,
        )

    def quantile(self, field: np.ndarray, coverage: float, region: np.ndarray | None = None) -> float:
        """Threshold so that about `coverage` of the lesion (or `region`) lies above it."""
        mask = (self.inside if region is None else region)[::3, ::3] > 0.5
        values = field[::3, ::3][mask]
        return float(np.quantile(values, 1.0 - coverage)) if values.size else 1.0

    # ---- painting (channel-first arrays: per-pixel weights broadcast along rows, which numpy does fast)
    def paint(self, tint: np.ndarray) -> np.ndarray:
        """RGBA float32 canvas, shape (4, S, S): colour 0-255, alpha 0-1. `tint` darkens colours on dark skin."""
        spec = self.spec
        self.tint = tint.astype(np.float32)
        body = [c for c in spec.colours if c in BODY_COLOURS] or ["light_brown"]
        col = np.empty((3, self.size, self.size), np.float32)
        col[:] = self.rgb(body[0])
        col *= 0.9 + 0.14 * self.noise("shade", 3.0) + 0.06 * self.noise("grain", 18.0)
        for i, name in enumerate(body[1:]):
            self.colour_zone(col, name, i)
        structures = set(spec.structures)
        painters = (
            ("network", self.network),
            ("atypical_network", self.network),
            ("peripheral_network", self.network),
            ("regular_globules", self.globules),
            ("irregular_dots", self.globules),
            ("blue_white_veil", self.veil),
            ("regression", self.regression),
            ("central_white_patch", self.white_patch),
            ("red_lacunae", self.lacunae),
            ("strawberry_pattern", self.strawberry),
            ("blue_grey_ovoid_nests", self.ovoid_nests),
        )
        if spec.surface == "verrucous":
            self.verrucous(col)
        for name, painter in painters:
            if name in structures:
                painter(col, name)
        self.accents(col, structures)
        if spec.vessels in ("arborizing", "dotted", "glomerular"):
            self.vessels(col, spec.vessels)
        if spec.scale != "none":
            self.scale(col, spec.scale)
        if "keratin_mass" in structures:
            self.keratin_mass(col)
        for name in ("milia_like_cysts", "comedo_like_openings"):
            if name in structures:
                self.dots(col, name)
        if spec.surface == "ulcerated":
            self.ulcer(col)
        if spec.surface == "keratotic":
            col *= 0.9 + 0.2 * self.noise("rough", 14.0)
        if "pearly_border" in structures or spec.surface == "waxy":
            self.sheen(col, "pearly_border" in structures)
        self.relief(col)
        np.clip(col, 0, 255, out=col)
        return np.concatenate([col, self.alpha[None]], axis=0)

    def rgb(self, name: str | tuple[int, int, int], strength: float | None = None) -> np.ndarray:
        """A palette colour (or literal RGB) adapted to the skin tone, shaped (3, 1, 1) for broadcasting."""
        if strength is None:
            strength = 0.5 if name in ("white", "yellow") else 1.0
        rgb = np.array(PALETTE_RGB[name] if isinstance(name, str) else name, np.float32)
        return (rgb * self.tint**strength).reshape(3, 1, 1)

    def colour_zone(self, col: np.ndarray, name: str, index: int) -> None:
        """A second/third colour: concentric when the lesion is symmetric, blotchy and off-centre otherwise."""
        r = self.rng(f"zone{index}")
        rgb = self.rgb(name)
        if self.spec.asymmetry < 0.3:
            mid = self.size // 2
            darker = rgb.sum() < col[:, mid, mid].sum()
            edge = r.uniform(0.35, 0.6) + 0.12 * (self.noise(f"zone{index}", 2.0) - 0.5)
            if darker:
                weight = _smoothstep((edge - self.d_offset) / 0.25 + 0.5)
            else:
                weight = _smoothstep((self.d - edge) / 0.25 + 0.5)
            weight *= r.uniform(0.55, 0.8)
        else:
            field = self.noise(f"zone{index}", r.uniform(1.0, 1.8)) - 0.25 * self.d_offset
            coverage = {"black": 0.15, "blue_grey": 0.22, "red": 0.22}.get(name, 0.35) * r.uniform(0.8, 1.3)
            soft = {"black": 0.06, "blue_grey": 0.2, "red": 0.2}.get(name, 0.14)
            weight = _smoothstep((field - self.quantile(field, coverage)) / soft + 0.5)
            opacity = {"red": 0.5, "pink": 0.65, "blue_grey": 0.7}.get(name, 0.85)
            weight *= opacity * (0.7 + 0.3 * self.noise(f"zone{index}t", 7.0))
        _blend(col, rgb, weight * self.inside)

    def network(self, col: np.ndarray, name: str) -> None:
        typical = name == "network"
        f1, f2, cell = self.cells(name, 0.14 if typical else 0.17)
        if typical:
            line_w = 0.026
        else:
            line_w = 0.015 + 0.045 * self.noise(name + "w", 3.0)
        lines = np.exp(-(((f2 - f1) / line_w) ** 2))
        if name == "peripheral_network":
            reach = _smoothstep((self.d - 0.4) / 0.25) * _smoothstep((1.1 - self.d) / 0.2) * 0.5
            darken = 0.72
        elif typical:
            reach = _smoothstep((1.0 - self.d) / 0.4) * 0.75
            darken = 0.58
        else:
            reach = _smoothstep((self.noise(name + "gap", 2.5) - 0.3) / 0.15) * self.inside * 0.65
            darken = 0.6
        w = lines * reach
        col *= 1.0 - (1.0 - darken) * w + 0.05 * reach * (cell - 0.5)

    def globules(self, col: np.ndarray, name: str) -> None:
        r = self.rng(name)
        regular = name == "regular_globules"
        n = int(r.integers(14, 30)) if regular else int(r.integers(18, 40))
        if regular:
            angles, radii = r.uniform(0, 2 * math.pi, n), np.sqrt(r.uniform(0, 0.55, n))
            sizes = np.full(n, r.uniform(0.035, 0.05))
            centres = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
            rgb = self.rgb("dark_brown") * 0.85
        else:
            focus = r.normal(0, 0.35, 2)
            centres = focus + r.normal(0, 0.35, (n, 2))
            sizes = r.uniform(0.015, 0.055, n)
            rgb = self.rgb("black")
        keep = np.hypot(*centres.T) < 0.9
        mask = self.disc_mask(centres[keep], sizes[keep], blur=0.6)
        _blend(col, rgb, mask * 0.85 * self.inside)

    def veil(self, col: np.ndarray, name: str) -> None:
        field = self.noise(name, 1.3) - 0.3 * self.d_offset
        w = _smoothstep((field - self.quantile(field, 0.28)) / 0.25 + 0.5) * self.inside
        w *= 0.6 + 0.4 * self.noise(name + "t", 6.0)
        _blend(col, self.rgb("blue_grey"), w * 0.7)
        _blend(col, self.rgb((205, 212, 225), 0.5), w * 0.3)

    def regression(self, col: np.ndarray, name: str) -> None:
        field = self.noise(name, 1.6) + 0.15 * self.noise(name + "e", 6.0)
        w = _smoothstep((field - self.quantile(field, 0.15)) / 0.1 + 0.5) * self.inside
        _blend(col, self.rgb("white") * 0.95, w * 0.6)
        pepper = self.disc_mask(self.rng(name).uniform(-1, 1, (160, 2)), np.full(160, 0.012), blur=0.3)
        _blend(col, self.rgb("blue_grey") * 0.85, w * pepper * 0.8)

    def white_patch(self, col: np.ndarray, name: str) -> None:
        r = self.rng(name)
        edge = r.uniform(0.25, 0.4) + 0.2 * (self.noise(name, 3.5) - 0.5)
        w = _smoothstep((edge - self.d_offset) / 0.2 + 0.5)
        _blend(col, self.rgb((234, 222, 214), 0.5), w * (0.65 + 0.25 * self.noise(name + "t", 8.0)))

    def lacunae(self, col: np.ndarray, name: str) -> None:
        r = self.rng(name)
        f1, f2, cell = self.cells(name, r.uniform(0.26, 0.36))
        inner = _smoothstep((0.78 - f1 / np.maximum(f2, 1e-6)) / 0.12)  # rounded lagoons, not polygons
        tones = [PALETTE_RGB["red"], (150, 30, 48), (176, 40, 60)]
        if "blue_grey" in self.spec.colours:
            tones += [(104, 46, 88), (86, 50, 96)]
        palette = np.stack([self.rgb(t)[:, 0, 0] for t in tones], axis=1)  # (3, k)
        choice = np.minimum((cell * len(tones)).astype(np.int32), len(tones) - 1)
        lagoon = np.take(palette, choice, axis=1) * (0.85 + 0.25 * (1.0 - inner * f1 / max(float(f1.max()), 1e-6)))
        septa = self.rgb((222, 184, 186), 0.5) if "white" in self.spec.colours else self.rgb((200, 112, 124))
        col[:] = septa + (lagoon - septa) * inner

    def strawberry(self, col: np.ndarray, name: str) -> None:
        f1, f2, _ = self.cells(name, 0.22)
        _blend(col, self.rgb("red"), np.exp(-(((f2 - f1) / 0.06) ** 2)) * 0.45 * self.inside)
        follicle = _smoothstep((0.05 - f1) / 0.03 + 0.5)
        _blend(col, self.rgb((240, 226, 210), 0.5), follicle * 0.8 * self.inside)

    def ovoid_nests(self, col: np.ndarray, name: str) -> None:
        r = self.rng(name)
        n = int(r.integers(2, 5))
        centres = r.uniform(-0.55, 0.55, (n, 2))
        mask = self.disc_mask(centres, r.uniform(0.08, 0.14, n), blur=0.05 * self.px_per_unit)
        _blend(col, self.rgb("blue_grey"), mask * 0.8 * self.inside)

    def verrucous(self, col: np.ndarray) -> None:
        """Gyri and sulci: meandering dark fissures (noise iso-lines) between lighter ridges."""
        a, b = self.noise("gyri", 4.5), self.noise("gyri2", 7.0)
        gap = np.minimum(np.abs(a - 0.5) / 0.05, np.abs(b - 0.5) / 0.07)
        fissure = np.exp(-(gap**2)) * self.inside
        col *= 1.0 - 0.45 * fissure + 0.1 * _smoothstep(gap / 3.0) + 0.08 * (self.noise("gyri3", 10.0) - 0.5)
        self.ridges = np.minimum(gap, 3.0) / 30.0

    def accents(self, col: np.ndarray, structures: set[str]) -> None:
        """White and yellow as areas, unless a structure or the scale already shows them."""
        spec = self.spec
        for name in ("white", "yellow"):
            if name not in spec.colours or spec.scale != "none":
                continue
            if name == "white" and structures & {"central_white_patch", "regression", "red_lacunae", "pearly_border"}:
                continue
            if name == "yellow" and "keratin_mass" in structures:
                continue
            field = self.noise(f"accent_{name}", 2.2)
            w = _smoothstep((field - self.quantile(field, 0.14)) / 0.12 + 0.5) * self.inside
            _blend(col, self.rgb(name), w * 0.6 * (0.7 + 0.3 * self.noise(f"accent_{name}t", 10.0)))

    def vessels(self, col: np.ndarray, kind: str) -> None:
        r = self.rng("vessels")
        size = self.size
        if kind == "arborizing":
            img = Image.new("L", (size, size))
            draw = ImageDraw.Draw(img)
            for _ in range(int(r.integers(2, 5))):
                ang = r.uniform(0, 2 * math.pi)
                reach = r.uniform(0.45, 0.85)
                start = (reach * math.cos(ang), reach * math.sin(ang))
                heading = ang + math.pi + r.normal(0, 0.6)
                self._branch(draw, r, start, heading, width=r.uniform(0.035, 0.05), depth=0)
            blur = max(0.4, 0.006 * self.px_per_unit)
            mask = np.asarray(img.filter(ImageFilter.GaussianBlur(blur)), np.float32) / 255
            _blend(col, self.rgb((200, 26, 42), 0.7), mask * 0.95 * self.inside)
            return
        if kind == "dotted":
            pts = r.uniform(-0.95, 0.95, (int(r.integers(30, 60)), 2))
        else:
            centres = r.uniform(-0.8, 0.8, (int(r.integers(12, 22)), 2))
            pts = (centres[:, None, :] + r.normal(0, 0.03, (len(centres), 5, 2))).reshape(-1, 2)
        keep = np.hypot(*pts.T) < 0.95
        mask = self.disc_mask(pts[keep], np.full(int(keep.sum()), 0.013), blur=0.4)
        _blend(col, self.rgb((184, 36, 50), 0.7), mask * 0.7 * self.inside)

    def _branch(
        self,
        draw: ImageDraw.ImageDraw,
        r: np.random.Generator,
        start: tuple[float, float],
        heading: float,
        width: float,
        depth: int,
    ) -> None:
        """One vessel: a wandering, tapering polyline that sometimes forks (plain floats: this loop is hot)."""
        x, y = float(start[0]), float(start[1])
        turns = r.normal(0, 0.35, 10)
        forks = r.random(10)
        for step in range(int(r.integers(5, 10))):
            heading += float(turns[step])
            nx, ny = x + 0.09 * math.cos(heading), y + 0.09 * math.sin(heading)
            if math.hypot(nx, ny) > 0.95:
                return
            draw.line(
                [self.px((x, y)), self.px((nx, ny))], fill=255, width=max(1, int(round(width * self.px_per_unit)))
            )
            if depth < 3 and forks[step] < 0.3:
                turn = float(r.choice([-1, 1]) * r.uniform(0.4, 0.9))
                self._branch(draw, r, (nx, ny), heading + turn, width * 0.65, depth + 1)
            width *= 0.93
            x, y = nx, ny

    def px(self, point: tuple[float, float] | np.ndarray) -> tuple[float, float]:
        return (float(point[0] * self.px_per_unit + self.size / 2), float(point[1] * self.px_per_unit + self.size / 2))

    def scale(self, col: np.ndarray, kind: str) -> None:
        keratin = self.rgb("white")
        if "yellow" in self.spec.colours:
            keratin = keratin + (self.rgb("yellow") - keratin) * self.noise("scale_mix", 2.5)
        if kind == "thick":
            field = self.noise("scale", 2.2) + 0.35 * (1 - self.d)
            w = _smoothstep((field - self.quantile(field, 0.5)) / 0.12 + 0.5)
            rough = 0.8 + 0.3 * self.noise("scale_rough", 12.0)
            crack = np.exp(-(((self.noise("scale_crack", 4.0) - 0.5) / 0.03) ** 2))
            _blend(col, keratin * (rough * (1 - 0.35 * crack)), w * 0.9 * self.inside)
        else:
            flecks = self.noise("scale", 16.0)
            zone = _smoothstep((self.noise("scale_zone", 2.0) - 0.3) / 0.15)
            _blend(col, keratin, _smoothstep((flecks - 0.6) / 0.08) * zone * 0.55 * self.inside)

    def keratin_mass(self, col: np.ndarray) -> None:
        edge = 0.4 + 0.2 * (self.noise("keratin", 3.0) - 0.5)
        w = _smoothstep((edge - self.d_offset) / 0.1 + 0.5)
        tone = self.rgb("yellow") * (0.82 + 0.28 * self.noise("keratin_rough", 10.0))
        _blend(col, tone, w * 0.9)

    def dots(self, col: np.ndarray, name: str) -> None:
        r = self.rng(name)
        milia = name == "milia_like_cysts"
        n = int(r.integers(5, 14)) if milia else int(r.integers(4, 10))
        ang, rad = r.uniform(0, 2 * math.pi, n), np.sqrt(r.uniform(0.0, 0.6, n))
        pts = np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
        sizes = r.uniform(0.03, 0.055, n) if milia else r.uniform(0.025, 0.045, n)
        mask = self.disc_mask(pts, sizes, blur=0.8 if milia else 0.5)
        rgb = self.rgb((248, 244, 222), 0.3) if milia else self.rgb((46, 32, 24))
        _blend(col, rgb, mask * (0.95 if milia else 0.85))

    def ulcer(self, col: np.ndarray) -> None:
        edge = self.rng("ulcer").uniform(0.22, 0.35) + 0.15 * (self.noise("ulcer", 3.0) - 0.5)
        w = _smoothstep((edge - self.d_offset) / 0.05 + 0.5)
        rim = np.exp(-(((self.d_offset - edge) / 0.04) ** 2))
        _blend(col, self.rgb((226, 196, 120), 0.5), rim * 0.6)
        _blend(col, self.rgb((118, 40, 34)) * (0.7 + 0.5 * self.noise("crust", 9.0)), w * 0.95)

    def sheen(self, col: np.ndarray, rim: bool) -> None:
        _blend(col, self.rgb("white"), 0.18 * self.inside)
        if rim:
            ring = np.exp(-(((self.d - 0.85) / 0.1) ** 2)) * (0.4 + 0.6 * self.noise("pearl", 3.0))
            _blend(col, self.rgb((250, 240, 240), 0.4), ring * 0.55)

    def disc_mask(self, centres: np.ndarray, radii: np.ndarray, blur: float) -> np.ndarray:
        """Filled circles (lesion units) rasterised with PIL, softened by `blur` pixels."""
        img = Image.new("L", (self.size, self.size))
        draw = ImageDraw.Draw(img)
        for (x, y), rad in zip(centres, radii):
            cx, cy = self.px((x, y))
            rp = max(0.7, rad * self.px_per_unit)
            draw.ellipse([cx - rp, cy - rp, cx + rp, cy + rp], fill=255)
        if blur > 0:
            img = img.filter(ImageFilter.GaussianBlur(blur))
        return np.asarray(img, np.float32) / 255

    def relief(self, col: np.ndarray) -> None:
        """Shade raised and nodular lesions as a dome lit from the top left; verrucous ones get bumps."""
        height = {"flat": 0.0, "raised": 0.5, "nodular": 1.0}[self.spec.elevation]
        if not height and self.spec.surface != "verrucous":
            return
        dome = height * np.clip(1.0 - self.d**2, 0.0, 1.0) ** 0.7
        if self.spec.surface == "verrucous":
            dome = dome + 0.04 * np.clip(self.ridges / 0.1, 0, 1)
        gy, gx = np.gradient(dome, 1.0 / self.px_per_unit)
        col *= 1.0 + 0.12 * np.clip(gx * self.light[0] + gy * self.light[1], -3, 3)
        if self.spec.elevation == "nodular":
            hx, hy = self.light * 0.35
            spot = np.exp(-((self.u - hx) ** 2 + (self.v - hy) ** 2) / 0.02) * 0.3
            col += (250.0 - col) * spot


# --------------------------------------------------------------------------------------------- view


@dataclass
class _Optics:
    """How the camera sees the scene: a smooth light field (built small), a colour cast, noise and blur."""

    light_low: np.ndarray  # (h/4, w/4) float32 brightness multiplier
    cast: np.ndarray  # (3,) float32 white-balance gains
    noise_sigma: float
    blur: float  # box-blur radius in pixels (0 = none)

    @classmethod
    def sample(cls, rng: np.random.Generator, width: int, height: int, domain: str) -> _Optics:
        lw, lh = max(8, width // 4), max(8, height // 4)
        ys = ((np.arange(lh, dtype=np.float32) + 0.5) / lh - 0.5)[:, None] * height
        xs = ((np.arange(lw, dtype=np.float32) + 0.5) / lw - 0.5)[None, :] * width
        half_diag = math.hypot(width, height) / 2
        if domain == "dermoscopic":  # even light inside the dermatoscope's black circular rim
            r = np.sqrt(xs**2 + ys**2) / half_diag
            rim = rng.uniform(0.8, 1.02)
            light = (1.0 - 0.08 * r**2) * (np.clip((rim - r) / 0.04, 0.0, 1.0) * 0.93 + 0.07)
            return cls(light.astype(np.float32), np.ones(3, np.float32), 1.5, 0.0)
        ang = rng.uniform(0, 2 * math.pi)  # smartphone: light falls off across the frame, a hot spot, a cast
        light = 1.0 + rng.uniform(0.15, 0.4) * (xs * math.cos(ang) + ys * math.sin(ang)) / half_diag
        hot = rng.uniform(-0.4, 0.4, 2) * [width, height]
        light = light + 0.1 * np.exp(-(((xs - hot[0]) ** 2 + (ys - hot[1]) ** 2) / (0.5 * half_diag) ** 2))
        light = light * rng.uniform(0.85, 1.1)
        cast = np.array([rng.uniform(0.9, 1.1), rng.uniform(0.95, 1.05), rng.uniform(0.88, 1.1)], np.float32)
        blur = rng.uniform(0.5, 1.2) * min(width, height) / 224
        return cls(light.astype(np.float32), cast, float(rng.uniform(2.0, 5.0)), float(blur))

    def light(self, width: int, height: int) -> np.ndarray:
        return np.asarray(Image.fromarray(self.light_low, "F").resize((width, height), Image.BILINEAR))

    def finish(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        """Sensor noise (Gaussian, drawn through a byte lookup table: far cheaper than normal()) and blur."""
        pixels = np.asarray(image, np.int16)
        lut = np.round(_NORMAL_QUANTILES * self.noise_sigma).astype(np.int16)
        noise = np.take(lut, np.frombuffer(rng.bytes(pixels.size), np.uint8)).reshape(pixels.shape)
        pixels = pixels + noise
        np.clip(pixels, 0, 255, out=pixels)
        out = Image.fromarray(pixels.astype(np.uint8))
        return out.filter(ImageFilter.BoxBlur(self.blur)) if self.blur > 0 else out


def _background(
    rng: np.random.Generator, width: int, height: int, skin_rgb: np.ndarray, optics: _Optics, domain: str
) -> np.ndarray:
    """Lit skin as H x W x 3 uint8: tone, blotchy redness and texture, built at quarter size and upsampled."""
    lh, lw = optics.light_low.shape
    mott = np.asarray(Image.fromarray(rng.random((3, 4), dtype=np.float32), "F").resize((lw, lh), Image.BICUBIC))
    mott = mott - np.float32(0.5)
    grain = rng.random((lh, lw), dtype=np.float32) - np.float32(0.5)
    level = 1.0 + (0.06 if domain == "dermoscopic" else 0.1) * mott + 0.06 * grain
    redness = np.array([1.0, -0.6, -0.5], np.float32).reshape(3, 1, 1) * (0.05 * mott)
    tone = (skin_rgb * optics.cast).reshape(3, 1, 1)
    low = np.clip(tone * (level + redness) * optics.light_low, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    full = Image.fromarray(np.ascontiguousarray(low)).resize((width, height), Image.BICUBIC)
    return np.array(full)  # writable copy


def _warp_onto(
    image: np.ndarray,
    layer: np.ndarray,
    support: tuple[float, float, float, float],
    px_per_unit: float,
    radius: float,
    theta: float,
    elongation: float,
    centre: tuple[float, float],
    optics: _Optics,
) -> float:
    """Bilinear-warp the canonical RGBA layer (4 x S x S) into the view and composite it, lit like the skin,
    into the H x W x 3 uint8 image in place; float work stays inside the lesion's box. Returns lesion pixels."""
    height, width = image.shape[:2]
    size = layer.shape[1]
    cos, sin = math.cos(theta), math.sin(theta)
    u0, u1, v0, v1 = support
    corners = np.array([[u, v] for u in (u0, u1) for v in (v0, v1)]) * [elongation, 1.0 / elongation]
    xs_c = centre[0] + radius * (corners[:, 0] * cos - corners[:, 1] * sin)
    ys_c = centre[1] + radius * (corners[:, 0] * sin + corners[:, 1] * cos)
    x0, x1 = max(0, int(xs_c.min()) - 1), min(width, int(xs_c.max()) + 2)
    y0, y1 = max(0, int(ys_c.min()) - 1), min(height, int(ys_c.max()) + 2)
    if x1 <= x0 or y1 <= y0:
        return 0.0
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - centre[0]) / radius
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - centre[1]) / radius
    sx = (xs[None, :] * cos + ys[:, None] * sin) * (px_per_unit / elongation) + (size / 2 - 0.5)
    sy = (ys[:, None] * cos - xs[None, :] * sin) * (px_per_unit * elongation) + (size / 2 - 0.5)
    outside = (sx < 0) | (sy < 0) | (sx > size - 2) | (sy > size - 2)
    np.clip(sx, 0, size - 2.001, out=sx)
    np.clip(sy, 0, size - 2.001, out=sy)
    ix, iy = sx.astype(np.int32), sy.astype(np.int32)
    fx, fy = sx - ix.astype(np.float32), sy - iy.astype(np.float32)  # int32 - float32 would promote to float64
    flat = layer.reshape(4, -1)
    idx = iy * size + ix

    def texel(offset: int) -> np.ndarray:  # np.take is several times faster than fancy indexing here
        return np.take(flat, idx + offset, axis=1)

    top = texel(0)
    top += (texel(1) - top) * fx
    bottom = texel(size)
    bottom += (texel(size + 1) - bottom) * fx
    top += (bottom - top) * fy
    alpha = top[3]
    alpha[outside] = 0.0
    light = optics.light(width, height)[y0:y1, x0:x1]
    region = image[y0:y1, x0:x1]
    pixels = region.transpose(2, 0, 1).astype(np.float32)
    lesion = top[:3] * (light * alpha) * optics.cast.reshape(3, 1, 1)
    pixels += lesion - pixels * alpha
    region[...] = np.clip(pixels, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return float(np.count_nonzero(alpha > 0.5))


def _add_hair(image: np.ndarray, rng: np.random.Generator, skin_rgb: np.ndarray) -> Image.Image:
    height, width = image.shape[:2]
    mask = Image.new("L", (width, height))
    draw = ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(1, 6))):
        p0, p1, p2 = (rng.uniform(-0.1, 1.1, 2) * [width, height] for _ in range(3))
        t = np.linspace(0, 1, 24)[:, None]
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        draw.line(
            [tuple(pt) for pt in curve],
            fill=int(rng.integers(170, 240)),
            width=max(1, int(round(min(width, height) / 150 * rng.uniform(0.7, 1.5)))),
        )
    colour = tuple(int(c) for c in np.clip(skin_rgb * 0.22, 0, 255))
    base = Image.fromarray(image)
    return Image.composite(Image.new("RGB", base.size, colour), base, mask.filter(ImageFilter.GaussianBlur(0.5)))


# --------------------------------------------------------------------------------------------- helpers


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return (x * x * (3.0 - 2.0 * x)).astype(np.float32)


def _blend(col: np.ndarray, rgb: np.ndarray, weight: np.ndarray | float) -> None:
    """In-place lerp of the (3, S, S) canvas towards `rgb` ((3, 1, 1) colour or a canvas) by `weight`."""
    col += (rgb - col) * weight


def _expand(grid: np.ndarray, cell: int, size: int) -> np.ndarray:
    return np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1)[:size, :size]
