"""Small synthetic inspection category in the MVTec-AD folder layout.

``make_category`` renders a round machined metal part (turned face, chamfered rim, central bore)
lying on a woven conveyor-belt fabric, seen from above under a light from the upper left.  Every
image draws fresh stochastic texture (fabric weave noise, metal grain, turning marks), a small
shift, a rotation of at most a few degrees, brightness/contrast jitter and sensor noise, so the
good class is a distribution rather than one picture.  Three defect types are painted on the
part's face, each with a pixel mask:

* ``scratch`` - thin bright or dark, slightly curved line segments;
* ``hole`` - a dark round pit with a raised, lit/shadowed rim;
* ``stain`` - a soft-edged, irregular colour blotch (rust, oil or coolant) that keeps the texture.

The layout written is::

    <root>/<category>/train/good/000.png ...
    <root>/<category>/test/good/000.png ...
    <root>/<category>/test/<defect>/000.png ...
    <root>/<category>/ground_truth/<defect>/000_mask.png ...   (0/255, same size as the image)

Everything is deterministic in ``seed``: each image has its own random stream derived from
``(seed, split, index)``, so it does not depend on how many other images are generated.  The
category is built in a hidden temporary folder beside its destination and renamed into place, so
a half-written category never appears under the final name.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from inspector.data.mvtec import check_category_name

__all__ = ["DEFECT_TYPES", "GENERATOR_VERSION", "MARKER_NAME", "make_category"]

DEFECT_TYPES: tuple[str, ...] = ("scratch", "hole", "stain")
"""Defect types written under ``test/`` and ``ground_truth/``."""

GENERATOR_VERSION = 1
"""Bumped whenever the rendering changes, so stale generated categories are rebuilt."""

MARKER_NAME = ".synthetic.json"
"""File written last into a generated category; records the arguments it was generated with."""

# Stream ids used to derive one independent random stream per image.
_SPLIT_IDS = {"train/good": 1, "test/good": 2, "scratch": 3, "hole": 4, "stain": 5}

# Geometry, as fractions of the image size.
_PART_RADIUS = 0.34
_CHAMFER = 0.035
_BORE_RADIUS = 0.09
_MAX_SHIFT = 0.015
_MAX_ROTATION_DEG = 3.0
_LIGHT_DIR = math.radians(225.0)  # light comes from the upper left (image y axis points down)

_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]


_BG_TINT = np.array([0.82, 1.0, 0.9], np.float32)  # dark green-grey conveyor belt
_METAL_TINT = np.array([1.0, 0.99, 0.96], np.float32)  # slightly warm steel


@dataclass(frozen=True)
class _Grids:
    """Everything about the padded canvas that is the same for all images of one call."""

    size: int
    pad: int
    x: np.ndarray  # canvas x coordinates, float32 (C, C)
    y: np.ndarray
    r: np.ndarray  # distance to the part centre
    light: np.ndarray  # cos(angle around the centre - light direction): +1 on the lit side
    sin2: np.ndarray  # sin(angle around the centre) ** 2, to orient the brushed streaks
    gradient: np.ndarray  # illumination falloff across the face
    chamfer: np.ndarray  # bool: outer chamfer ring
    inner: np.ndarray  # bool: inner chamfer ring around the bore
    bg_w: np.ndarray  # (C, C, 3) weight*tint of the belt (shadow, occlusion by the part, bore shade)
    metal_w: np.ndarray  # (C, C, 3) weight*tint of the part (anti-aliased coverage)


def _make_grids(size: int) -> _Grids:
    # rotation by <= 3 degrees plus the shift move the corners by < 0.055 * size
    pad = math.ceil(size * 0.06) + 2
    c = size + 2 * pad
    coords = np.arange(c, dtype=np.float32)
    y, x = np.meshgrid(coords, coords, indexing="ij")
    centre = (c - 1) / 2.0
    dx, dy = x - centre, y - centre
    r = np.hypot(dx, dy)
    phi = np.arctan2(dy, dx)
    rp, rc, rb = _PART_RADIUS * size, _CHAMFER * size, _BORE_RADIUS * size

    # soft shadow cast towards the lower right; anti-aliased part outline; the through-bore shows
    # the belt, in the shadow of the part
    sh = max(1, round(size * 0.02))
    shadow_mask = ((r < rp) & (r >= rb)).astype(np.float32)
    shadow = cv2.GaussianBlur(np.roll(shadow_mask, (sh, sh), axis=(0, 1)), (0, 0), max(1.0, size * 0.015))
    cover = np.clip(rp - r + 0.5, 0.0, 1.0) * np.clip(r - rb + 0.5, 0.0, 1.0)
    bore = 1.0 - 0.55 * np.clip(rb - r + 0.5, 0.0, 1.0)
    bg_w = ((1.0 - 0.55 * shadow) * (1.0 - cover) * bore)[..., None] * _BG_TINT
    metal_w = (cover * bore)[..., None] * _METAL_TINT
    return _Grids(
        size=size,
        pad=pad,
        x=x,
        y=y,
        r=r,
        light=np.cos(phi - _LIGHT_DIR).astype(np.float32),
        sin2=(np.sin(phi) ** 2).astype(np.float32),
        gradient=(0.05 * (-dx - dy) / size).astype(np.float32),
        chamfer=r > rp - rc,
        inner=r < rb + rc * 0.6,
        bg_w=bg_w.astype(np.float32),
        metal_w=metal_w.astype(np.float32),
    )


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sx: float, sy: float) -> np.ndarray:
    """White noise blurred with an (anisotropic) Gaussian of std (sx, sy), renormalised to unit std.

    Wide blurs are computed on a proportionally coarser noise grid and upsampled (much faster than
    a wide kernel at full resolution; the result is equally smooth).
    """
    h, w = shape
    fx, fy = max(1, int(sx // 2)), max(1, int(sy // 2))
    n: np.ndarray = rng.standard_normal((-(-h // fy) + 1, -(-w // fx) + 1), dtype=np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigmaX=max(sx / fx, 0.3), sigmaY=max(sy / fy, 0.3), borderType=cv2.BORDER_REFLECT)
    n = cv2.resize(n, (w, h), interpolation=cv2.INTER_CUBIC) if fx > 1 or fy > 1 else n[:h, :w]
    std = float(n.std())
    return n / std if std > 0 else n


def _smoothstep(edge0: float, edge1: float, v: np.ndarray) -> np.ndarray:
    t = np.clip((v - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _render_good(rng: np.random.Generator, g: _Grids) -> tuple[np.ndarray, tuple[float, float]]:
    """Render one defect-free RGB float32 image in [0, 1] of shape (S, S, 3).

    Returns the image and the part centre in image coordinates.
    """
    s, pad = g.size, g.pad
    shape = g.x.shape

    # --- background: woven conveyor-belt fabric (basket weave of warp/weft threads) ---------------
    period = max(4.0, s / 24.0) * rng.uniform(0.97, 1.03)
    jitter = _smooth_noise(rng, shape, s / 30.0, s / 30.0) * (period * 0.05)
    xu, yu = (g.x + jitter) / period, (g.y - jitter) / period
    fx, fy = np.floor(xu), np.floor(yu)
    horizontal = ((fx + fy) % 2.0) == 0
    warp = np.sqrt(np.abs(np.sin(np.pi * (yu - fy))))  # profile across a horizontal thread
    weft = np.sqrt(np.abs(np.sin(np.pi * (xu - fx))))
    weave = np.where(horizontal, warp, weft)
    # fine grain: fibres of the belt, grain of the metal (one field serves both, they do not overlap)
    grain = _smooth_noise(rng, shape, 0.7, 0.7)
    blotch = _smooth_noise(rng, shape, s / 10.0, s / 10.0)
    fabric = 0.2 + 0.075 * weave + 0.018 * grain + 0.015 * blotch

    # --- the part: turned metal face, chamfered rim and central bore -------------------------------
    turn_period = max(1.6, s / 70.0) * rng.uniform(0.95, 1.05)
    wobble = _smooth_noise(rng, shape, s / 20.0, s / 20.0)
    turning = np.sin(g.r * np.float32(2.0 * np.pi / turn_period) + 0.6 * wobble)
    # brushed streaks running around the face: mix horizontal and vertical streak fields
    # according to the angle, which approximates a blur along the local tangent
    streak_h = _smooth_noise(rng, shape, s / 25.0, 0.6)
    streak_v = _smooth_noise(rng, shape, 0.6, s / 25.0)
    streak = streak_v + (streak_h - streak_v) * g.sin2
    shade = _smooth_noise(rng, shape, s / 6.0, s / 6.0)
    face = 0.6 + 0.02 * turning + 0.025 * grain + 0.02 * streak + 0.02 * shade + g.gradient
    chamfer_lum = 0.52 + 0.28 * g.light + 0.02 * grain
    inner_chamfer = 0.48 - 0.25 * g.light + 0.02 * grain  # inner chamfer faces the other way
    lum = np.where(g.chamfer, chamfer_lum, face)
    lum = np.where(g.inner, inner_chamfer, lum)
    canvas = fabric[..., None] * g.bg_w + lum[..., None] * g.metal_w

    # --- per-image pose and exposure -------------------------------------------------------------
    angle = rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG)
    dx, dy = rng.uniform(-_MAX_SHIFT * s, _MAX_SHIFT * s, size=2)
    c = (shape[0] - 1) / 2.0
    m = cv2.getRotationMatrix2D((c, c), angle, 1.0)
    m[0, 2] += dx - pad
    m[1, 2] += dy - pad
    img = cv2.warpAffine(canvas.astype(np.float32), m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    gain, offset = rng.uniform(0.93, 1.07), rng.uniform(-0.02, 0.02)
    img = img * np.float32(gain) + np.float32(offset)
    img += (rng.standard_normal((s, s), dtype=np.float32) * np.float32(0.006))[..., None]  # sensor
    centre = ((s - 1) / 2.0 + dx, (s - 1) / 2.0 + dy)
    return img, centre


def _face_point(rng: np.random.Generator, s: int, centre: tuple[float, float], margin: float) -> np.ndarray:
    """A random point on the turned face (between bore and chamfer), ``margin`` pixels inside it."""
    r_in = _BORE_RADIUS * s + _CHAMFER * s * 0.6 + margin
    r_out = (_PART_RADIUS - _CHAMFER) * s - margin
    if r_out <= r_in:
        r_in = r_out = ((_BORE_RADIUS + _PART_RADIUS) / 2.0) * s
    rad = math.sqrt(rng.uniform(r_in**2, r_out**2))
    a = rng.uniform(0.0, 2.0 * math.pi)
    return np.array([centre[0] + rad * math.cos(a), centre[1] + rad * math.sin(a)])


def _add_scratch(rng, img, centre) -> np.ndarray:
    s = img.shape[0]
    alpha = np.zeros((s, s), np.float32)
    n_lines = 1 if rng.random() < 0.65 else 2
    thickness = max(1, round(s / 128))
    bright = rng.random() < 0.5
    for _ in range(n_lines):
        length = rng.uniform(0.12, 0.22) * s
        mid = _face_point(rng, s, centre, margin=0.02 * s)
        radial = math.atan2(mid[1] - centre[1], mid[0] - centre[0])
        direction = radial + math.pi / 2 + rng.uniform(-0.7, 0.7)  # roughly tangential: stays on face
        u = np.array([math.cos(direction), math.sin(direction)])
        nrm = np.array([-u[1], u[0]])
        p0, p2 = mid - u * length / 2, mid + u * length / 2
        p1 = mid + nrm * rng.uniform(-0.25, 0.25) * length  # quadratic Bezier control point: curvature
        t = np.linspace(0.0, 1.0, 24)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        # 4 fractional bits for sub-pixel accurate anti-aliased drawing
        pts_fx = np.round(pts * 16).astype(np.int32).reshape(-1, 1, 2)
        layer = np.zeros((s, s), np.uint8)
        cv2.polylines(layer, [pts_fx], False, 255, thickness, cv2.LINE_AA, shift=4)
        alpha = np.maximum(alpha, layer.astype(np.float32) / 255.0)
    strength = rng.uniform(0.8, 1.0)
    target = np.array([0.95, 0.95, 0.93] if bright else [0.1, 0.1, 0.1], np.float32)
    a = (alpha * strength)[..., None]
    img[:] = img * (1 - a) + target * a
    return alpha > 0.2


def _add_hole(rng, img, centre) -> np.ndarray:
    s = img.shape[0]
    mask = np.zeros((s, s), bool)
    n_holes = 1 if rng.random() < 0.7 else 2
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    for _ in range(n_holes):
        rh = max(1.5, rng.uniform(0.025, 0.04) * s)
        rim = max(1.0, rh * 0.4)
        cx, cy = _face_point(rng, s, centre, margin=rh + rim + 1)
        dx, dy = xx - cx, yy - cy
        d = np.hypot(dx, dy)
        lit = np.cos(np.arctan2(dy, dx) - _LIGHT_DIR)
        # pit: dark, the wall opposite the light catches a little light; smooth falloff to the floor
        depth = _smoothstep(rh, rh * 0.35, d)
        pit = 0.22 + 0.1 * (-lit) * (d / rh) - 0.14 * depth
        # raised rim (burr): lit side bright, shadow side dark, fades out towards its outer edge
        ring = _smoothstep(rh + rim, rh + rim * 0.3, d) * _smoothstep(rh - 0.5, rh + 0.5, d)
        a_pit = np.clip(rh - d + 0.5, 0.0, 1.0)[..., None]
        img[:] = img * (1 - a_pit) + np.clip(pit, 0.02, 1.0)[..., None] * a_pit
        img[:] = img + (0.26 * lit * ring)[..., None]
        mask |= d <= rh + rim * 0.8
    return mask


def _add_stain(rng, img, centre) -> np.ndarray:
    s = img.shape[0]
    rs = max(2.0, rng.uniform(0.04, 0.065) * s)
    cx, cy = _face_point(rng, s, centre, margin=rs * 0.8)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    ratio = rng.uniform(0.55, 1.0)
    u = (xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)
    v = -(xx - cx) * math.sin(theta) + (yy - cy) * math.cos(theta)
    ell = np.sqrt(u**2 + (v / ratio) ** 2) / rs  # 1 on the ellipse boundary
    wobble = _smooth_noise(rng, (s, s), rs * 0.35, rs * 0.35)
    field = 1.0 - ell + 0.22 * wobble
    inside = (field > 0).astype(np.float32)
    inside[round(np.clip(cy, 0, s - 1)), round(np.clip(cx, 0, s - 1))] = 1.0  # never empty
    soft = cv2.GaussianBlur(inside, (0, 0), max(0.8, rs * 0.2))
    opacity = rng.uniform(0.55, 0.75)
    alpha = soft * opacity
    palette = [
        np.array([0.62, 0.34, 0.14], np.float32),  # rust
        np.array([0.2, 0.17, 0.26], np.float32),  # oil
        np.array([0.3, 0.5, 0.62], np.float32),  # coolant residue
    ]
    colour = palette[int(rng.integers(len(palette)))]
    lum = img.mean(axis=2, keepdims=True)
    tinted = colour * (lum / 0.6)  # keep the surface texture under the stain
    a = alpha[..., None]
    img[:] = img * (1 - a) + tinted * a
    return alpha > 0.3 * opacity


_DEFECT_PAINTERS = {"scratch": _add_scratch, "hole": _add_hole, "stain": _add_stain}


def _to_png_bytes(img: np.ndarray) -> bytes:
    """float RGB in [0, 1] -> PNG bytes (cv2 encodes BGR, so flip channels)."""
    u8 = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(u8[..., ::-1]), _PNG_PARAMS)
    if not ok:  # pragma: no cover - cv2 failure
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _mask_png_bytes(mask: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", mask.astype(np.uint8) * 255, _PNG_PARAMS)
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _params(n_train, n_test_good, n_test_defect_per_type, size, seed) -> dict:
    return {
        "generator": "inspector.data.synthetic",
        "version": GENERATOR_VERSION,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_defect_per_type": n_test_defect_per_type,
        "size": size,
        "seed": seed,
        "defect_types": list(DEFECT_TYPES),
    }


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def _write_one(tmp: Path, grids: _Grids, seed: int, split: str, index: int) -> None:
    """Render and write one image (and its mask for defect types)."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    img, centre = _render_good(rng, grids)
    name = f"{index:03d}"
    if split in _DEFECT_PAINTERS:
        mask = _DEFECT_PAINTERS[split](rng, img, centre)
        if not mask.any():  # tiny sizes only: fall back to the defect's centre pixel
            s = grids.size
            mask[min(max(round(centre[1]), 0), s - 1), min(max(round(centre[0]), 0), s - 1)] = True
        (tmp / "ground_truth" / split / f"{name}_mask.png").write_bytes(_mask_png_bytes(mask))
        (tmp / "test" / split / f"{name}.png").write_bytes(_to_png_bytes(img))
    else:
        (tmp / split / f"{name}.png").write_bytes(_to_png_bytes(img))


def _write_category(tmp: Path, n_train, n_test_good, n_test_defect_per_type, size, seed) -> None:
    grids = _make_grids(size)
    jobs: list[tuple[str, int]] = []
    for split, count in (("train/good", n_train), ("test/good", n_test_good)):
        (tmp / split).mkdir(parents=True)
        jobs += [(split, i) for i in range(count)]
    for defect in DEFECT_TYPES:
        (tmp / "test" / defect).mkdir(parents=True)
        (tmp / "ground_truth" / defect).mkdir(parents=True)
        jobs += [(defect, i) for i in range(n_test_defect_per_type)]

    # OpenCV and numpy release the GIL in the heavy parts, and every image has its own random
    # stream, so threads speed this up without changing a single byte of the output.
    workers = max(1, min(4, os.cpu_count() or 1, len(jobs)))
    if workers == 1:
        for split, i in jobs:
            _write_one(tmp, grids, seed, split, i)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for fut in [pool.submit(_write_one, tmp, grids, seed, split, i) for split, i in jobs]:
            fut.result()


def make_category(
    root: Path,
    category: str = "synthetic",
    n_train: int = 40,
    n_test_good: int = 16,
    n_test_defect_per_type: int = 8,
    size: int = 256,
    seed: int = 0,
) -> Path:
    """Generate a synthetic category under ``root/category`` and return its path.

    If ``root/category`` already holds a category generated by this function with the same
    arguments (and generator version), it is reused as is.  If it holds one generated with other
    arguments it is replaced.  Any other existing folder there is never touched: ``FileExistsError``.
    """
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    for name, n in (
        ("n_train", n_train),
        ("n_test_good", n_test_good),
        ("n_test_defect_per_type", n_test_defect_per_type),
    ):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    check_category_name(category)

    root = Path(root)
    dest = root / category
    params = _params(n_train, n_test_good, n_test_defect_per_type, size, seed)
    if dest.exists():
        marker = _read_marker(dest)
        if marker == params:
            return dest
        if marker is None or marker.get("generator") != params["generator"]:
            raise FileExistsError(f"{dest} exists and was not generated by make_category; refusing to overwrite it")

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{category}.tmp-", dir=root))
    try:
        _write_category(tmp, n_train, n_test_good, n_test_defect_per_type, size, seed)
        (tmp / MARKER_NAME).write_text(json.dumps(params, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the category is an ordinary folder
        if dest.exists():  # an older synthetic category generated with other arguments
            trash = Path(tempfile.mkdtemp(prefix=f".{category}.old-", dir=root))
            os.replace(dest, trash / category)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, dest)
        except OSError:
            # Someone else finished the same category concurrently: keep theirs if it matches.
            if _read_marker(dest) == params:
                return dest
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
