"""Synthetic multi-contrast brain MRI with a lesion (a digital phantom), written in the BraTS or ISLES 2015 layout.

    python demo/make_sample_data.py --out sample_data/brats --cases 6 --volume_size 96
    python demo/make_sample_data.py --out sample_data/brats23 --layout brats2023 --cases 6 --volume_size 96

Each case is a procedurally generated head (skin, subcutaneous fat, temporalis muscle, a skull with diploe, CSF,
folded cortical grey matter, white matter, deep grey nuclei, lateral and third ventricles) with a glioma (necrotic
core, enhancing rim, vasogenic oedema, mass effect) or, for the ISLES layout, a sub-acute infarct. Tissue
fractions (partial volume included) are turned into T1, T1ce, T2, FLAIR and DWI signals with the MR signal
equations and 3 T relaxation times from the literature, then a smooth bias field and Rician noise are applied.
Everything is vectorised numpy; a 128-voxel case takes a few seconds.
"""
import argparse
import gzip
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.core.errors import UserError, run_cli  # noqa: E402
from utils.core.fileio import atomic_path, save_text  # noqa: E402
from utils.core.options import ArgumentParser  # noqa: E402
from utils.data.contrasts import canonical_contrast  # noqa: E402
from utils.data.layouts import BRATS_NAMINGS, LABEL, relabel  # noqa: E402

FOV_MM = 240.0        # BraTS: 240 x 240 x 155 voxels of 1 mm
FOV_DEPTH_MM = 155.0
R1_GD = 4.0           # gadolinium T1 relaxivity at 3 T, 1/s per mM (gadobutrol/Gd-DTPA: 3.3-5)
R2_GD = 5.0           # gadolinium T2 relaxivity at 3 T, 1/s per mM
B_VALUE = 1000.0      # s/mm^2, the usual stroke DWI
# The phantom's labels are BraTS 2019's (NCR/NET, ED, ET); files of later releases get theirs when written.
BRATS_LABELS = BRATS_NAMINGS["brats2019"].labels


@dataclass(frozen=True)
class Tissue:
    """Relaxation times (ms), proton density (relative to water) and apparent diffusion (mm^2/s) at 3 T."""

    t1: float
    t2: float
    pd: float
    adc: float


# 3 T values: Stanisz et al. 2005 (WM, GM, muscle), Lu et al. 2005 (CSF T1), Wansapura et al. 1999 (GM/WM T2),
# de Bazelaire et al. 2004 (fat); lesion values are typical of glioblastoma and sub-acute infarct reports.
# Cortical bone has a sub-millisecond T2, so it is dark in every sequence.
TISSUES = {
    "wm": Tissue(1084, 69, 0.69, 0.70e-3),
    "gm": Tissue(1820, 99, 0.80, 0.80e-3),
    "deep_gm": Tissue(1350, 72, 0.76, 0.75e-3),
    "csf": Tissue(4163, 2000, 1.00, 3.00e-3),
    "fat": Tissue(382, 68, 0.90, 0.01e-3),
    "marrow": Tissue(700, 50, 0.70, 0.01e-3),
    "bone": Tissue(250, 0.5, 0.15, 0.0),
    "muscle": Tissue(1412, 50, 0.75, 1.50e-3),
    "skin": Tissue(1100, 45, 0.70, 1.00e-3),
    "enhancing": Tissue(1700, 110, 0.85, 1.10e-3),
    "necrosis": Tissue(3200, 250, 0.92, 2.20e-3),
    "oedema": Tissue(1950, 180, 0.86, 1.50e-3),
    "infarct": Tissue(1600, 160, 0.84, 0.45e-3),
}


@dataclass(frozen=True)
class Acquisition:
    """Acquisition parameters (ms); ti = 0 means spin echo, b > 0 adds diffusion weighting."""

    tr: float
    te: float
    ti: float = 0.0
    b: float = 0.0
    contrast_agent: bool = False
    fat_suppressed: bool = False


SEQUENCES = {
    "t1": Acquisition(tr=600, te=12),
    "t1ce": Acquisition(tr=600, te=12, contrast_agent=True),
    "t2": Acquisition(tr=5000, te=100),
    "flair": Acquisition(tr=9000, te=120, ti=2500),
    "dwi": Acquisition(tr=6000, te=90, b=B_VALUE, fat_suppressed=True),
}


def spin_echo(pd: np.ndarray, t1: np.ndarray, t2: np.ndarray, tr: float, te: float) -> np.ndarray:
    """S = PD (1 - exp(-TR/T1)) exp(-TE/T2)."""
    return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


def inversion_recovery(pd: np.ndarray, t1: np.ndarray, t2: np.ndarray, tr: float, ti: float,
                       te: float) -> np.ndarray:
    """Magnitude IR: S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2) (FLAIR nulls CSF at TI ~ 2500 ms)."""
    return pd * np.abs(1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)


def signal(tissue: Tissue, seq: Acquisition, gd_mm: np.ndarray | float = 0.0) -> np.ndarray:
    """Signal of a tissue in a sequence; gadolinium (mM) shortens T1 and T2 when the sequence is post-contrast."""
    t1, t2 = np.float32(tissue.t1), np.float32(tissue.t2)
    if seq.contrast_agent:
        # Relaxation rates add: 1/T = 1/T0 + r * C (rates per second, times in ms).
        t1 = 1000.0 / (1000.0 / t1 + R1_GD * gd_mm)
        t2 = 1000.0 / (1000.0 / t2 + R2_GD * gd_mm)
    if seq.ti > 0:
        s = inversion_recovery(tissue.pd, t1, t2, seq.tr, seq.ti, seq.te)
    else:
        s = spin_echo(tissue.pd, t1, t2, seq.tr, seq.te)
    if seq.b > 0:
        s = s * math.exp(-seq.b * tissue.adc)
    if seq.fat_suppressed and tissue.t1 < 600:
        s = s * 0.05
    return np.asarray(s, dtype=np.float32)


# ------------------------------------------------------------------------------------------ random fields

class WaveField:
    """A smooth random function: a sum of plane waves with random directions and phases (unit variance)."""

    def __init__(self, rng: np.random.Generator, waves: int, wavelength_mm: float) -> None:
        """Draw `waves` wave vectors of length 2 pi / wavelength."""
        dirs = rng.normal(size=(waves, 3))
        self.k = (dirs / np.linalg.norm(dirs, axis=1, keepdims=True) * (2 * np.pi / wavelength_mm)).astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, waves).astype(np.float32)
        self.amp = np.float32(math.sqrt(2.0 / waves))

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Value at positions (mm)."""
        out = np.zeros(np.broadcast(x, y, z).shape, dtype=np.float32)
        for (kx, ky, kz), ph in zip(self.k, self.phase):
            out += np.cos(kx * x + ky * y + kz * z + ph)
        return out * self.amp

    def with_gradient(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, ...]:
        """Value and its gradient (per mm) at positions (mm)."""
        shape = np.broadcast(x, y, z).shape
        val, gx, gy, gz = (np.zeros(shape, dtype=np.float32) for _ in range(4))
        for (kx, ky, kz), ph in zip(self.k, self.phase):
            arg = kx * x + ky * y + kz * z + ph
            val += np.cos(arg)
            s = np.sin(arg)
            gx -= kx * s
            gy -= ky * s
            gz -= kz * s
        return val * self.amp, gx * self.amp, gy * self.amp, gz * self.amp


def ramp(x: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume step: 0 below -width/2, 1 above +width/2, linear between (fraction of a voxel inside)."""
    return np.clip(0.5 + x / width, 0.0, 1.0).astype(np.float32)


def ellipsoid(x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: Sequence[float], semi: Sequence[float],
              width: float) -> np.ndarray:
    """Soft membership of an axis-aligned ellipsoid (mm), with a partial-volume edge `width` wide."""
    level = np.sqrt(((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2
                    + ((z - centre[2]) / semi[2]) ** 2)
    return ramp((1.0 - level) * min(semi), width)


# --------------------------------------------------------------------------------------------- anatomy

@dataclass
class Anatomy:
    """Tissue fractions per voxel (summing to the head fraction), gadolinium map, labels and head/brain masks."""

    fractions: dict[str, np.ndarray]
    gd: np.ndarray
    labels: np.ndarray
    head: np.ndarray
    brain: np.ndarray


@dataclass
class Grid:
    """Voxel-centre coordinates in mm: x to the patient's left, y posterior, z superior (LPS index order)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    spacing: float

    @classmethod
    def make(cls, size: int, depth: int) -> "Grid":
        """A size x size x depth grid covering the BraTS field of view."""
        spacing = FOV_MM / size
        axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * spacing for n in (size, size, depth)]
        x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
        return cls(x, y, z, spacing)


def _rotate(grid: Grid, yaw: float, roll: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense coordinates rotated by a small head yaw (about z) and roll (about y), in radians."""
    cy, sy, cr, sr = math.cos(yaw), math.sin(yaw), math.cos(roll), math.sin(roll)
    x, y, z = np.broadcast_arrays(grid.x, grid.y, grid.z)
    x1, y1 = cy * x - sy * y, sy * x + cy * y
    return (cr * x1 + sr * z).astype(np.float32), y1.astype(np.float32), (-sr * x1 + cr * z).astype(np.float32)


def _mass_effect(x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: np.ndarray, radius: float,
                 strength: float) -> tuple[np.ndarray, ...]:
    """Where the healthy anatomy at (x, y, z) came from: tissue near a tumour is pushed outwards."""
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    r2 = dx * dx + dy * dy + dz * dz
    # r_source = r (1 - k exp(-r^2 / s^2)) is monotonic for k < 1, so the warp never folds tissue over itself.
    scale = 1.0 - strength * np.exp(-r2 / (1.6 * radius) ** 2)
    return centre[0] + dx * scale, centre[1] + dy * scale, centre[2] + dz * scale


@dataclass
class HeadShape:
    """Per-case random anatomy parameters (mm)."""

    semi: np.ndarray          # brain semi-axes (left-right, anterior-posterior, inferior-superior)
    centre_z: float
    ventricle_scale: float
    sulcus_halfwidth: float
    cortex_mm: float
    folds: WaveField
    bends: WaveField
    fold_depth: WaveField
    surface: WaveField
    layers: WaveField

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "HeadShape":
        """Random head: size, ventricle enlargement, atrophy (sulcal width), cortical folding pattern."""
        scale = rng.uniform(0.93, 1.05)
        return cls(semi=np.array([67.0, 86.0, 62.0]) * scale * rng.uniform(0.97, 1.03, 3),
                   centre_z=float(rng.uniform(-8, -2)), ventricle_scale=float(rng.uniform(0.8, 1.4)),
                   sulcus_halfwidth=float(rng.uniform(0.4, 0.9)), cortex_mm=float(rng.uniform(3.0, 3.6)),
                   folds=WaveField(rng, 40, 11.5), bends=WaveField(rng, 24, 18.0), fold_depth=WaveField(rng, 8, 60.0),
                   surface=WaveField(rng, 10, 140.0), layers=WaveField(rng, 8, 90.0))


def _brain_depth(shape: HeadShape, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, ...]:
    """Radial depth below the pial surface (mm; negative outside) and the unit direction from the centre."""
    zc = z - shape.centre_z
    # Egg shape: the brain is wider at the back than at the front.
    ax = shape.semi[0] * (1.0 + 0.07 * np.clip(y / shape.semi[1], -1, 1))
    rho = np.sqrt((x / ax) ** 2 + (y / shape.semi[1]) ** 2 + (zc / shape.semi[2]) ** 2) + 1e-6
    r = np.sqrt(x * x + y * y + zc * zc) + 1e-6
    nx, ny, nz = x / r, y / r, zc / r
    rho_surface = 1.0 + 0.035 * shape.surface(70 * nx, 70 * ny, 70 * nz)
    return (r * (rho_surface / rho - 1.0)).astype(np.float32), r, (nx, ny, nz)


def _sulcal_distance(shape: HeadShape, depth: np.ndarray, r: np.ndarray, n: tuple,
                     inside: np.ndarray) -> np.ndarray:
    """Distance (mm) to the nearest sulcus or the interhemispheric fissure, for voxels in the cortical shell."""
    nx, ny, nz = (c[inside] for c in n)
    radius, r_in = 70.0, r[inside]
    val, gx, gy, gz = shape.folds.with_gradient(radius * nx, radius * ny, radius * nz)
    # Sulci are the zero set of a random field on the sphere of directions (so their walls run inwards from the
    # surface), bent by a weaker 3-D field so they do not look like straight spokes. The distance to the zero
    # set is about |f| / |grad f|.
    radial = gx * nx + gy * ny + gz * nz
    scale = radius / r_in
    gx, gy, gz = (gx - radial * nx) * scale, (gy - radial * ny) * scale, (gz - radial * nz) * scale
    xi, yi, zi = nx * r_in, ny * r_in, nz * r_in
    bend, bx, by, bz = shape.bends.with_gradient(xi, yi, zi)
    val, gx, gy, gz = val + 0.6 * bend, gx + 0.6 * bx, gy + 0.6 * by, gz + 0.6 * bz
    lateral = np.abs(val) / np.sqrt(np.maximum(gx * gx + gy * gy + gz * gz, 1e-4))
    d = depth[inside]
    sulcus_depth = 17.0 + 5.0 * shape.fold_depth(radius * nx, radius * ny, radius * nz)
    below = np.maximum(d - sulcus_depth, 0.0)
    dist = np.sqrt(lateral * lateral + below * below)
    # The fissure between the hemispheres reaches down to the corpus callosum (spared in a central core).
    core = (yi / 48.0) ** 2 + ((zi - 8.0) / 30.0) ** 2 < 1.0
    fissure = np.where(core, np.inf, np.abs(xi - 0.8 * np.sin(yi / 40.0)))
    return np.minimum(dist, fissure).astype(np.float32)


def _ventricles(x: np.ndarray, y: np.ndarray, zc: np.ndarray, scale: float, width: float) -> np.ndarray:
    """CSF fraction of the lateral ventricles (bodies, frontal and occipital horns, temporal horns) and third."""
    parts = []
    for side in (-1.0, 1.0):
        # Bodies diverge towards the back; frontal horns lie close to the midline.
        body_x = side * (6.5 + 0.1 * (y + 30.0)) * (0.8 + 0.2 * scale)
        level = np.sqrt(((x - body_x) / (3.0 * scale + 1.0)) ** 2 + ((y + 4.0) / 27.0) ** 2
                        + ((zc - 13.0 + 0.05 * y) / (7.0 + scale)) ** 2)
        parts.append(ramp((1.0 - level) * (3.0 * scale + 1.0), width))
        parts.append(ellipsoid(x, y, zc, (side * 16.0 * (0.85 + 0.15 * scale), 21.0, 8.0),
                               (5.0 * scale, 11.0, 9.0), width))
        parts.append(ellipsoid(x, y, zc, (side * 27.0, 4.0, -14.0), (2.5 * scale, 12.0, 4.0), width))
    parts.append(ellipsoid(x, y, zc, (0.0, 3.0, -2.0), (1.2 * scale + 0.5, 12.0, 9.0), width))
    return np.maximum.reduce(parts)


def _deep_grey(x: np.ndarray, y: np.ndarray, zc: np.ndarray, width: float) -> np.ndarray:
    """Fraction of the deep grey nuclei: caudate heads, thalami, lentiform nuclei."""
    parts = []
    for side in (-1.0, 1.0):
        parts.append(ellipsoid(x, y, zc, (side * 13.0, -13.0, 10.0), (5.0, 11.0, 9.0), width))
        parts.append(ellipsoid(x, y, zc, (side * 10.5, 10.0, 0.0), (8.0, 14.0, 10.0), width))
        parts.append(ellipsoid(x, y, zc, (side * 24.0, -2.0, 2.0), (6.0, 17.0, 11.0), width))
    return np.maximum.reduce(parts)


def _extracerebral(shape: HeadShape, depth: np.ndarray, n: tuple, zc: np.ndarray,
                   width: float) -> dict[str, np.ndarray]:
    """Layers outside the brain along each ray: CSF, inner table, diploe, outer table, muscle, fat, skin."""
    nx, ny, nz = n
    vary = shape.layers(70 * nx, 70 * ny, 70 * nz)
    out = -depth  # distance outside the pial surface
    # Temporalis muscle: thick on the sides of the head, below the vertex.
    temporal = 7.0 * np.clip((np.abs(nx) - 0.55) / 0.35, 0, 1) * np.clip((25.0 - zc) / 20.0, 0, 1)
    thickness = [("csf", 2.5 + 0.8 * vary), ("bone", 1.6), ("marrow", 2.6 + 1.0 * vary + 1.5 * np.abs(ny)),
                 ("bone2", 1.6), ("muscle", 1.0 + temporal), ("fat", 3.0 + 1.2 * vary), ("skin", 1.8)]
    layers, edge = {}, np.zeros_like(out)
    inner = ramp(out, width)  # the pial surface
    for name, t in thickness:
        edge = edge + t
        outer = ramp(out - edge, width)
        layers[name] = np.clip(inner - outer, 0, 1)
        inner = outer
    layers["bone"] = layers["bone"] + layers.pop("bone2")
    return layers


def build_anatomy(grid: Grid, rng: np.random.Generator, lesion: str = "tumour") -> Anatomy:
    """Draw a head and a lesion ('tumour' or 'stroke') and return its tissue fractions on the grid."""
    shape = HeadShape.draw(rng)
    width = grid.spacing
    rotated = _rotate(grid, rng.uniform(-0.08, 0.08), rng.uniform(-0.05, 0.05))
    x, y, z = rotated
    lesion_geom = _draw_lesion(rng, shape, lesion)
    if lesion == "tumour":
        # The tumour lives in the head's frame; the healthy anatomy around it is sampled from displaced points.
        x, y, z = _mass_effect(x, y, z, lesion_geom["centre"], lesion_geom["radius"], lesion_geom["push"])
    depth, r, n = _brain_depth(shape, x, y, z)
    zc = z - shape.centre_z
    in_brain = ramp(depth, width)
    shell = (depth > -2.0) & (depth < 30.0)
    csf_dist = np.where(depth > 0, depth, 0.0).astype(np.float32)
    csf_dist[shell] = np.minimum(csf_dist[shell], _sulcal_distance(shape, depth, r, n, shell))
    sulcal = ramp(shape.sulcus_halfwidth - csf_dist, width) * in_brain
    grey = np.clip(ramp(shape.cortex_mm - csf_dist, width) * in_brain - sulcal, 0, 1)
    ventricles = _ventricles(x, y, zc, shape.ventricle_scale, width) * in_brain
    deep = np.clip(_deep_grey(x, y, zc, width) * in_brain - ventricles, 0, 1)
    grey = grey * (1 - ventricles) * (1 - deep)
    sulcal = sulcal * (1 - ventricles)
    white = np.clip(in_brain - sulcal - grey - ventricles - deep, 0, 1)
    frac = {"wm": white, "gm": grey, "deep_gm": deep, "csf": sulcal + ventricles}
    gd = np.zeros_like(white)
    labels = np.zeros(white.shape, dtype=np.uint8)
    if lesion == "tumour":
        _add_tumour(frac, gd, labels, lesion_geom, rotated, in_brain, width, rng)
    else:
        _add_infarct(frac, labels, lesion_geom, (x, y, zc), depth, width)
    outside = _extracerebral(shape, depth, n, zc, width)
    frac["csf"] = frac["csf"] + outside.pop("csf")
    frac.update(outside)
    head = np.clip(sum(frac.values()), 0, 1)
    brain = depth > -1.5
    return Anatomy(frac, gd, labels, head, brain)


def _draw_lesion(rng: np.random.Generator, shape: HeadShape, lesion: str) -> dict:
    """Position, size and shape fields of the lesion."""
    side = rng.choice([-1.0, 1.0])
    if lesion == "tumour":
        centre = np.array([side * rng.uniform(22, 36), rng.uniform(-35, 30), shape.centre_z + rng.uniform(8, 28)],
                          dtype=np.float32)
        radius = float(rng.uniform(11, 19))
        return {"centre": centre, "radius": radius, "push": float(rng.uniform(0.25, 0.45)),
                "necrosis": float(rng.uniform(0.35, 0.7)), "oedema": float(rng.uniform(1.6, 2.3)),
                "gd": float(rng.uniform(0.3, 0.6)), "fields": [WaveField(rng, 8, w) for w in (16.0, 22.0, 11.0)],
                "lobes": WaveField(rng, 12, 22.0)}
    if lesion == "stroke":
        direction = np.array([side * rng.uniform(0.6, 0.9), rng.uniform(-0.5, 0.5), rng.uniform(0.0, 0.4)])
        return {"direction": direction / np.linalg.norm(direction), "angle": float(rng.uniform(0.25, 0.45)),
                "depth": float(rng.uniform(20, 35)), "field": WaveField(rng, 16, 28.0)}
    raise UserError(f"unknown lesion type {lesion!r}; use tumour or stroke")


def _add_tumour(frac: dict, gd: np.ndarray, labels: np.ndarray, geom: dict, coords: tuple, in_brain: np.ndarray,
                width: float, rng: np.random.Generator) -> None:
    """Replace brain tissue by a glioma: necrotic core, enhancing rim (gadolinium uptake), oedema in white matter."""
    x, y, z = coords
    c, radius = geom["centre"], geom["radius"]
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    r = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-6
    u = (dx / r * 20, dy / r * 20, dz / r * 20)  # directions on a 20 mm sphere for the shape fields
    f_rim, f_core, f_oed = (f(*u) for f in geom["fields"])
    lobes = geom["lobes"](x, y, z)  # position-dependent, so the outlines are lobulated rather than star-shaped
    outer = ramp(radius * (1 + 0.12 * f_rim + 0.08 * lobes) - r, width)
    core = ramp(radius * geom["necrosis"] * (1 + 0.15 * f_core) - r, width)
    extent = ramp(radius * geom["oedema"] * (1 + 0.15 * f_oed + 0.25 * lobes) - r, 2 * width) * (1 - outer)
    # Vasogenic oedema spreads along white matter and largely spares the cortex.
    oedema_wm = extent * frac["wm"]
    oedema_gm = 0.3 * extent * (frac["gm"] + frac["deep_gm"])
    frac["wm"] = frac["wm"] - oedema_wm
    frac["gm"] = frac["gm"] * (1 - 0.3 * extent)
    frac["deep_gm"] = frac["deep_gm"] * (1 - 0.3 * extent)
    for name in ("wm", "gm", "deep_gm", "csf"):
        frac[name] = frac[name] * (1 - outer)
    frac["necrosis"] = core * in_brain
    frac["enhancing"] = np.clip(outer - core, 0, 1) * in_brain
    frac["oedema"] = (oedema_wm + oedema_gm) * (1 - outer)
    texture = gaussian_filter(rng.normal(size=gd.shape).astype(np.float32), 1.0)
    texture /= texture.std() + 1e-6
    gd += frac["enhancing"] * geom["gd"] * np.clip(1 + 0.35 * texture, 0.3, 1.8)
    stack = np.stack([np.full_like(core, 0.5), frac["necrosis"], frac["oedema"], frac["enhancing"]])
    codes = np.array([0, BRATS_LABELS["necrosis"], BRATS_LABELS["oedema"], BRATS_LABELS["enhancing"]], np.uint8)
    labels[...] = codes[np.argmax(stack, axis=0)]


def _add_infarct(frac: dict, labels: np.ndarray, geom: dict, coords: tuple, depth: np.ndarray,
                 width: float) -> None:
    """Replace cortex and underlying white matter in a wedge-shaped arterial territory by infarcted tissue."""
    x, y, z = coords  # relative to the brain centre
    r = np.sqrt(x * x + y * y + z * z) + 1e-6
    cos_angle = (x * geom["direction"][0] + y * geom["direction"][1] + z * geom["direction"][2]) / r
    angle = np.arccos(np.clip(cos_angle, -1, 1))
    edge = geom["angle"] * (1 + 0.35 * geom["field"](x, y, z))
    wedge = ramp((edge - angle) * r, width) * ramp(geom["depth"] - depth, width)
    affected = wedge * (frac["wm"] + frac["gm"] + frac["deep_gm"])
    for name in ("wm", "gm", "deep_gm"):
        frac[name] = frac[name] * (1 - wedge)
    frac["infarct"] = affected
    labels[...] = (affected > 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- signals

def render(anatomy: Anatomy, contrast: str, rng: np.random.Generator, texture: np.ndarray,
           snr: float) -> np.ndarray:
    """Noisy magnitude image of one contrast: partial-volume signal mix, bias field, Rician noise, air masked."""
    seq = SEQUENCES[contrast]
    img = np.zeros_like(anatomy.head)
    for name, fraction in anatomy.fractions.items():
        tissue = TISSUES[name]
        if name == "enhancing" and seq.contrast_agent:
            s = signal(tissue, seq, anatomy.gd)
        else:
            s = signal(tissue, seq)
        img += fraction * s
    img *= 1.0 + 0.04 * texture  # microstructural variation in proton density
    reference = float(signal(TISSUES["wm"], seq)) or 1e-3
    # Coil sensitivity: a smooth multiplicative field, different for every acquisition.
    x, y, z = np.indices(img.shape, dtype=np.float32)
    bias_field = WaveField(rng, 6, 4.0 * max(img.shape))
    img *= np.exp(0.12 * bias_field(x, y, z))
    sigma = max(reference, 0.2 * float(img.max())) / snr
    real = img + rng.normal(0, sigma, img.shape).astype(np.float32)
    imag = rng.normal(0, sigma, img.shape).astype(np.float32)
    magnitude = np.sqrt(real * real + imag * imag)
    # Released datasets are masked: air outside the head is exactly zero.
    return np.where(anatomy.head >= 0.5, magnitude, 0.0).astype(np.float32)


def phantom_volumes(size: int = 96, depth: int | None = None, seed: int = 0, lesion: str = "tumour",
                    contrasts: Sequence[str] = ("t1", "t1ce", "t2", "flair"),
                    skull_strip: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Volumes {contrast: int16 (size, size, depth)}, the label volume (uint8) and the 4x4 affine (LPS order)."""
    if size < 16:
        raise UserError(f"--volume_size {size} is too small for a head phantom; use 16 or more")
    depth = depth or max(8, round(size * FOV_DEPTH_MM / FOV_MM))
    rng = np.random.default_rng(seed)
    grid = Grid.make(size, depth)
    anatomy = build_anatomy(grid, rng, lesion)
    texture = gaussian_filter(rng.normal(size=anatomy.head.shape).astype(np.float32), 1.5 * 1.0 / grid.spacing
                              + 0.5)
    texture /= texture.std() + 1e-6
    snr = float(rng.uniform(25, 45))
    keep = anatomy.brain if skull_strip else np.ones_like(anatomy.brain)
    volumes = {}
    for name in contrasts:
        img = render(anatomy, name, rng, texture, snr) * keep
        gain = rng.uniform(1500, 3000) / max(float(np.percentile(img[img > 0], 99.5)), 1e-6)
        volumes[name] = np.clip(np.round(img * gain), 0, np.iinfo(np.int16).max).astype(np.int16)
    return volumes, anatomy.labels * keep.astype(np.uint8), affine_for(size, depth, grid.spacing)


def affine_for(size: int, depth: int, spacing: float) -> np.ndarray:
    """BraTS-style affine: voxel axes run to the patient's left, posterior and superior (RAS world, mm)."""
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[:3, 3] = [spacing * (size - 1) / 2, spacing * (size - 1) / 2, -spacing * (depth - 1) / 2]
    return affine


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a NIfTI-1 file atomically with qform and sform set to the scanner frame."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    data = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    # Serialised in memory: nibabel picks the format from the name, which a temporary name would hide.
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


PHANTOM_CASE_NAMES = {"brats2019": "BraTS19_Phantom_{:04d}", "brats2021": "BraTS2021_{:05d}",
                      "brats2023": "BraTS-GLI-{:05d}-000"}


def case_name(index: int, naming: str = "brats2019") -> str:
    """BraTS-style name of phantom case `index` in a release's naming (BraTS19_Phantom_0001, BraTS-GLI-00001-000)."""
    return PHANTOM_CASE_NAMES[naming].format(index)


def write_brats_case(case_id: str, out_dir: str | Path, volumes: dict[str, np.ndarray], labels: np.ndarray,
                     affine: np.ndarray, naming: str = "brats2019") -> Path:
    """Write a case folder with a release's file names and label values (2019: <case>_t1.nii.gz ... <case>_seg)."""
    folder = Path(out_dir) / case_id
    scheme = BRATS_NAMINGS[naming]
    for name, vol in volumes.items():
        _save_nifti(vol, affine, folder / scheme.file_name(case_id, canonical_contrast(name)))
    _save_nifti(relabel(labels, "brats2019", naming), affine, folder / scheme.file_name(case_id, LABEL))
    return folder


def make_case(case_id: str, out_dir: str | Path, size: int = 96, seed: int = 0, depth: int | None = None,
              skull_strip: bool = False, naming: str = "brats2019") -> Path:
    """Generate one glioma phantom and write it with a BraTS release's names (default 2019); return its folder."""
    volumes, labels, affine = phantom_volumes(size, depth, seed, "tumour", skull_strip=skull_strip)
    return write_brats_case(case_id, out_dir, volumes, labels, affine, naming)


ISLES_TOKENS = {"t1": "MR_T1", "t2": "MR_T2", "dwi": "MR_DWI", "flair": "MR_Flair"}


def write_isles_case(number: int, out_dir: str | Path, volumes: dict[str, np.ndarray], labels: np.ndarray,
                     affine: np.ndarray) -> Path:
    """Write <out_dir>/<number>/VSD.Brain.XX.O.MR_<contrast>.<id>/<same>.nii and the OT label; return the folder."""
    folder = Path(out_dir) / str(number)
    base_id = 70000 + 10 * number
    items = [(f"VSD.Brain.XX.O.{tok}.{base_id + i}", volumes[name]) for i, (name, tok) in
             enumerate(ISLES_TOKENS.items())]
    items.append((f"VSD.Brain_3more.XX.O.OT.{base_id + len(items)}", labels))
    for stem, vol in items:
        _save_nifti(vol, affine, folder / stem / f"{stem}.nii")
    return folder


def make_isles_case(number: int, out_dir: str | Path, size: int = 96, seed: int = 0,
                    depth: int | None = None) -> Path:
    """Generate one skull-stripped infarct phantom with DWI and write it in the ISLES 2015 SISS layout."""
    volumes, labels, affine = phantom_volumes(size, depth, seed, "stroke", contrasts=tuple(ISLES_TOKENS),
                                              skull_strip=True)
    return write_isles_case(number, out_dir, volumes, labels, affine)


def split_counts(cases: int) -> tuple[int, int, int]:
    """Train/val/test sizes for a small sample: at least one test case, one val case when there are three."""
    test = max(1, round(cases * 0.2)) if cases >= 2 else 0
    val = max(1, round(cases * 0.15)) if cases >= 3 else 0
    return cases - val - test, val, test


def write_split_lists(ids: Sequence[str], folder: str | Path) -> Path:
    """train.list, val.list, test.list for pre_process.py --split_file FOLDER."""
    folder = Path(folder)
    n_train, n_val, _ = split_counts(len(ids))
    parts = {"train": ids[:n_train], "val": ids[n_train:n_train + n_val], "test": ids[n_train + n_val:]}
    for split, members in parts.items():
        if members:
            save_text("".join(f"{m}\n" for m in members), folder / f"{split}.list")
    return folder


# ----------------------------------------------------------------------------------------------- figure

def _window(img: np.ndarray) -> float:
    """Display maximum: a little above the 99.5th percentile of the non-zero pixels."""
    return 1.1 * float(np.percentile(img[img > 0], 99.5)) if img.any() else 1.0


def save_figure(volumes: dict[str, np.ndarray], labels: np.ndarray, path: str | Path, title: str = "") -> None:
    """Four contrasts and the label overlay of the axial slice through the lesion, radiological orientation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    area = (labels > 0).sum(axis=(0, 1))
    k = int(np.argmax(area)) if area.any() else labels.shape[2] // 2
    names = [n for n in ("t1", "t1ce", "t2", "flair", "dwi") if n in volumes]
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(3.0 * (len(names) + 1), 3.5), facecolor="black")
    for ax, name in zip(axes, names):
        # Transposed for display: anterior at the top, the patient's left on the right (radiological view).
        img = volumes[name][:, :, k].T.astype(np.float32)
        ax.imshow(img, cmap="gray", vmin=0, vmax=_window(img))
        ax.set_title(name.upper() if name != "t1ce" else "T1ce", color="white")
    base = volumes["flair" if "flair" in volumes else names[0]][:, :, k].T.astype(np.float32)
    axes[-1].imshow(base, cmap="gray", vmin=0, vmax=_window(base))
    colours = ListedColormap([(0, 0, 0, 0), (0.9, 0.2, 0.2, 0.7), (0.2, 0.8, 0.3, 0.55), (0, 0, 0, 0),
                              (1.0, 0.85, 0.1, 0.75)])
    axes[-1].imshow(labels[:, :, k].T, cmap=colours, vmin=0, vmax=4, interpolation="nearest")
    axes[-1].set_title("label", color="white")
    legend = [Patch(color=colours(code), label=name) for name, code in BRATS_LABELS.items()
              if (labels[:, :, k] == code).any()]
    if legend:
        axes[-1].legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=7, frameon=False,
                        labelcolor="white", handlelength=1, columnspacing=0.8)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, color="white")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, facecolor="black")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- command

def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = ArgumentParser("make_sample_data.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder that receives the case folders")
    p.add_argument("--cases", type=int, default=6, help="number of cases")
    # pre_process.py's --size (now --image_size) is a slice size, so the canonical name here says what it counts.
    p.add_argument("--volume_size", "--size", dest="size", type=int, default=96,
                   help="voxels across the 240 mm field of view")
    p.add_argument("--depth", type=int, default=None, help="axial slices (default: 155 mm worth at that spacing)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed + i")
    p.add_argument("--first_case", type=int, default=1, metavar="N",
                   help="number in the first case's name (more cases beside an earlier set get names of their own)")
    p.add_argument("--layout", choices=["brats", *BRATS_NAMINGS, "isles"], default="brats",
                   help="brats (= brats2019), brats2021, brats2023: gliomas in that BraTS release's file names and "
                        "label values; isles: infarcts, ISLES 2015 SISS files with DWI")
    p.add_argument("--skull_strip", action="store_true", help="zero everything outside the brain, as BraTS did")
    p.add_argument("--no_splits", action="store_true", help="do not write <out>/splits/{train,val,test}.list")
    p.add_argument("--figure", default=None, help="also save a PNG of the first case here")
    p.add_argument("--overwrite", action="store_true", help="replace existing case folders")
    return p


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Generate the cases (and split lists and figure); return the case folders."""
    from tqdm import tqdm

    args = build_parser().parse_args(argv)
    if args.cases < 1 or args.first_case < 1:
        raise UserError("--cases and --first_case must be at least 1")
    out = Path(args.out)
    brats = args.layout != "isles"
    naming = "brats2019" if args.layout == "brats" else args.layout
    numbers = range(args.first_case, args.first_case + args.cases)
    ids = [case_name(n, naming) if brats else str(n) for n in numbers]
    existing = [i for i in ids if (out / i).exists()]
    if existing and not args.overwrite:
        raise UserError(f"{out} already holds case {existing[0]}; pass --overwrite or choose another --out")
    folders, first = [], None
    for i, case_id in enumerate(tqdm(ids, desc="phantom cases", unit="case")):
        generated = phantom_volumes(args.size, args.depth, args.seed + i, "tumour" if brats else "stroke",
                                    ("t1", "t1ce", "t2", "flair") if brats else tuple(ISLES_TOKENS),
                                    args.skull_strip or not brats)
        if first is None:
            first = generated  # kept for the figure
        folders.append(write_brats_case(case_id, out, *generated, naming) if brats
                       else write_isles_case(numbers[i], out, *generated))
    if not args.no_splits:
        print(f"split lists: {write_split_lists(ids, out / 'splits')}")
    if args.figure:
        save_figure(first[0], first[1], args.figure,
                    f"digital phantom, seed {args.seed}, {FOV_MM / args.size:.3g} mm voxels")
        print(f"figure: {args.figure}")
    print(f"{len(folders)} {args.layout} cases in {out}")
    return folders


if __name__ == "__main__":
    sys.exit(run_cli(main))
