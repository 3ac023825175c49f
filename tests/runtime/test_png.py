"""The torch-free PNG writer and the orthogonal-slice preview."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from edgeseg.runtime.errors import InputError
from edgeseg.runtime.png import PALETTE, encode_png, preview, write_png, write_preview


def decode_png(data: bytes) -> np.ndarray:
    """A minimal PNG reader (8-bit grey/RGB/RGBA, no interlace, any of the five row filters)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    w, h, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0
    ch = {0: 1, 2: 3, 6: 4}[colour]
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * ch)
    out = np.zeros((h, w * ch), np.int32)
    for y in range(h):
        f, row = raw[y, 0], raw[y, 1:].astype(np.int32)
        prev = out[y - 1] if y else np.zeros(w * ch, np.int32)
        if f == 0:
            cur = row
        elif f == 2:
            cur = (row + prev) % 256
        else:  # Sub, Average, Paeth: sequential in x
            cur = np.zeros(w * ch, np.int32)
            for x in range(w * ch):
                a = cur[x - ch] if x >= ch else 0
                b, c = prev[x], (prev[x - ch] if x >= ch else 0)
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (row[x] + pred) % 256
        out[y] = cur
    img = out.astype(np.uint8).reshape(h, w, ch)
    return img[:, :, 0] if ch == 1 else img


@pytest.mark.parametrize("shape", [(5, 7, 3), (4, 9), (3, 2, 4), (1, 1, 3)])
def test_png_round_trip(shape):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(img)), img)


def test_png_decodes_with_pillow_too(tmp_path):
    Image = pytest.importorskip("PIL.Image", reason="Pillow not installed: the zlib decoder above covers it")
    img = np.random.default_rng(1).integers(0, 256, (6, 11, 3), dtype=np.uint8)
    path = write_png(tmp_path / "x.png", img)
    with Image.open(path) as im:
        assert im.size == (11, 6) and im.mode == "RGB"
        assert np.array_equal(np.asarray(im), img)


def test_png_rejects_bad_images():
    for bad in (np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros((0, 3, 3), np.uint8)):
        with pytest.raises(ValueError):
            encode_png(bad)


def test_write_png_is_atomic_and_refuses_overwrite(tmp_path):
    path = tmp_path / "sub" / "a.png"
    write_png(path, np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(InputError):
        write_png(path, np.ones((2, 2, 3), np.uint8))
    write_png(path, np.full((2, 2, 3), 9, np.uint8), force=True)
    assert decode_png(path.read_bytes())[0, 0, 0] == 9
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.png"]


# ---- preview ----------------------------------------------------------------------------------------

SHAPE = (20, 30, 10)
RAS_AFFINE = np.array([[1.0, 0, 0, -10], [0, 1.0, 0, -15], [0, 0, 2.0, -10], [0, 0, 0, 1]])


def to_lps(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same volume stored in LPS voxel order (first two axes flipped)."""
    nx, ny = data.shape[:2]
    flip = np.array([[-1, 0, 0, nx - 1], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    return np.ascontiguousarray(data[::-1, ::-1]), affine @ flip


def marker_volume() -> np.ndarray:
    """Soft tissue with a bright block in the patient's right-anterior-superior corner."""
    vol = np.full(SHAPE, 40.0, np.float32)
    vol[14:20, 22:30, 7:10] = 1000.0  # high x = right, high y = anterior, high z = superior
    return vol


def test_preview_shape_and_physical_aspect():
    img = preview(marker_volume(), RAS_AFFINE, pixel_mm=1.0, gap=4)
    # axial 30 x 20 (rows = y, cols = x); coronal 20 x 20 (rows = z at 2 mm); sagittal 20 x 30.
    assert img.shape == (30, 20 + 4 + 20 + 4 + 30, 3) and img.dtype == np.uint8


def test_preview_uses_radiological_convention():
    img = preview(marker_volume(), RAS_AFFINE, center=(8.0, 10.0, 6.0), pixel_mm=1.0, gap=4)
    axial, coronal, sagittal = img[:, :20], img[5:25, 24:44], img[5:25, 48:78]
    # Axial: patient right on the image's left, anterior at the top.
    assert axial[:8, :6].min() == 255 and axial[-8:, -6:].max() < 255
    # Coronal: patient right on the left, superior at the top.
    assert coronal[:4, :6].min() == 255 and coronal[-6:].max() < 255
    # Sagittal: anterior on the left, superior at the top.
    assert sagittal[:4, :8].min() == 255 and sagittal[:, -8:].max() < 255


def test_preview_is_the_same_for_any_voxel_order():
    vol = marker_volume()
    mask = np.zeros(SHAPE, bool)
    mask[3:12, 5:20, 2:8] = True
    a = preview(vol, RAS_AFFINE, {"organ": mask})
    lvol, laff = to_lps(vol, RAS_AFFINE)
    lmask, _ = to_lps(mask, RAS_AFFINE)
    b = preview(lvol, laff, {"organ": lmask})
    assert np.array_equal(a, b)


def test_mask_contours_are_coloured():
    vol = np.zeros(SHAPE, np.float32)
    m1 = np.zeros(SHAPE, bool)
    m1[4:12, 6:20, 2:8] = True
    m2 = np.zeros(SHAPE, bool)
    m2[14:18, 8:14, 3:6] = True
    img = preview(vol, RAS_AFFINE, {"one": m1, "two": m2}, pixel_mm=1.0)
    colours = {tuple(int(v) for v in px) for px in img.reshape(-1, 3)}
    assert PALETTE[0] in colours and PALETTE[1] in colours
    axial = img[:, :20]
    # The contour is drawn, the inside of the mask is left alone (black volume).
    ys, xs = np.nonzero(np.all(axial == PALETTE[0], axis=-1))
    assert ys.size > 10
    inner = axial[ys.min() + 2:ys.max() - 1, xs.min() + 2:xs.max() - 1]
    assert inner.size and inner.max() == 0
    # Custom colours.
    img2 = preview(vol, RAS_AFFINE, {"one": m1}, pixel_mm=1.0, colors={"one": (1, 2, 3)})
    assert np.any(np.all(img2 == (1, 2, 3), axis=-1))


def test_preview_centres_on_the_masks_by_default():
    vol = np.zeros(SHAPE, np.float32)
    m = np.zeros(SHAPE, bool)
    m[2:5, 3:6, 1:2] = True  # only slice k = 1 holds the mask
    img = preview(vol, RAS_AFFINE, {"m": m}, pixel_mm=1.0)
    assert np.any(np.all(img[:, :20] == PALETTE[0], axis=-1))  # the axial panel shows it


def test_preview_of_windowed_input_and_png(tmp_path):
    vol01 = np.linspace(0, 1, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    a = preview(vol01, RAS_AFFINE)
    b = preview(vol01, RAS_AFFINE, window=None)
    assert np.array_equal(a, b) and a.max() == 255
    path = write_preview(tmp_path / "p.png", vol01, RAS_AFFINE)
    assert np.array_equal(decode_png(Path(path).read_bytes()), a)
    with pytest.raises(ValueError):
        preview(vol01, RAS_AFFINE, {"m": np.zeros((2, 2, 2), bool)})
