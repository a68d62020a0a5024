#!/usr/bin/env python3
"""Writes the colour-mapped, YCbCr, planar and ZSTD/WebP-compressed TIFF decoding fixtures.

Needs `pip install numpy pillow tifffile imagecodecs` and libtiff (loaded with ctypes). Each
TIFF comes with a PNG of what it should decode to: what libtiff's RGBA interface
(TIFFReadRGBAImage, which applies colour maps and has libjpeg convert JPEG-compressed YCbCr)
gives, so the tests compare our decoder with libtiff and libjpeg, not with the writer's
input. The palette files are written byte by byte here (no common writer makes sub-byte
palettes or BigTIFF ones), which covers both byte orders and both header kinds; tifffile
checks that they hold the indices and colour map meant.

Outputs (tests/fixtures/formats/):
  palette8.tif, palette8.png      8-bit indices, LZW, written by Pillow: little-endian, a
                                  colour map of v·256 (Pillow's way of storing 8-bit colours)
  palette4.tif, palette4.png      4-bit indices, big-endian, rows ending mid-byte (23 wide),
                                  three strips, a colour map of v·257
  palette1.tif, palette1.png      1-bit indices (two colours), little-endian BigTIFF
  palette2_gray.tif, ….png        2-bit indices, big-endian BigTIFF, a gray colour map: the
                                  PNG is 8-bit gray
  palette16.tif, palette16.png    8-bit indices, a colour map with 16-bit precision; the PNG
                                  is 16-bit RGB straight from the map (libtiff's RGBA keeps
                                  only the top 8 bits of each entry, which is checked instead)
  ycbcr_jpeg.tif, ….png           JPEG-compressed YCbCr, chroma subsampled 2×2, two strips,
                                  each a whole JPEG stream (tifffile with libjpeg-turbo)
  ycbcr_jpeg_tables.tif, ….png    JPEG-compressed YCbCr, 1×1, abbreviated streams with shared
                                  JPEGTables, as libtiff writes them (through Pillow)
  planar_rgba16.tif, ….png        16-bit RGBA stored plane by plane (PlanarConfiguration 2),
                                  LZW with the horizontal predictor (tifffile); the PNG holds
                                  the same samples
  planar_gray_alpha8.tif, ….png   8-bit gray+alpha, plane by plane, uncompressed (tifffile)
  tiled_planar_rgb8.tif, ….png    37×23 8-bit RGB, plane by plane in 16×16 tiles (the edge
                                  tiles stick out), uncompressed (tifffile)
  tiled_planar_rgba16.tif, ….png  the same in 16-bit RGBA, Deflate-compressed
  zstd_rgb16.tif, ….png           37×23 16-bit RGB, ZSTD with the horizontal predictor, strips
                                  of 8 rows (tifffile with imagecodecs' zstd)
  webp_rgb8.tif, ….png            37×23 8-bit RGB, each strip a lossless WebP (libwebp through
  webp_rgba8.tif, ….png           imagecodecs), without and with alpha; the PNGs hold the samples
  ycbcr.tif, ycbcr.png            uncompressed YCbCr, 1×1, Rec. 709 YCbCrCoefficients and a
                                  studio-range ReferenceBlackWhite (16–235, 128±112); the PNG
                                  is 16-bit RGB from the TIFF 6 formulas in double precision.
                                  libtiff agrees within 2.5 levels: it truncates the expanded
                                  Y, Cb and Cr to whole levels before the matrix. (Pillow
                                  ignores both tags here.)
"""
import ctypes, ctypes.util, itertools, os, struct

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "formats")
H, W = 17, 23
SHORT, LONG, RATIONAL = 3, 4, 5


def tiff_file(tags, strips, order="<", big=False):
    """A one-image TIFF: `tags` ({tag: (type, values)}, rationals as (numerator,
    denominator) pairs) plus the strips' offsets and sizes; strips first, then the IFD and
    the values that do not fit in their entries."""
    head = 16 if big else 8
    offsets = list(itertools.accumulate([head] + [len(s) for s in strips[:-1]]))
    tags = {**tags, 273: (LONG, offsets), 279: (LONG, [len(s) for s in strips])}
    data = b"".join(strips)
    data += b"\0" * (len(data) % 2)
    ifd_at = head + len(data)
    count, entry, offset = ("Q", "HHQ", "Q") if big else ("H", "HHI", "I")
    inline = 8 if big else 4
    extra_at = ifd_at + struct.calcsize(count) + len(tags) * (20 if big else 12) + inline
    entries, extra = b"", b""
    for tag in sorted(tags):
        kind, values = tags[tag]
        if kind == RATIONAL:
            payload = struct.pack(f"{order}{2 * len(values)}I", *itertools.chain(*values))
        else:
            payload = struct.pack(f"{order}{len(values)}{'H' if kind == SHORT else 'I'}", *values)
        if len(payload) <= inline:
            value = payload.ljust(inline, b"\0")
        else:
            value = struct.pack(order + offset, extra_at + len(extra))
            extra += payload + b"\0" * (len(payload) % 2)
        entries += struct.pack(order + entry, tag, kind, len(values)) + value
    header = b"II" if order == "<" else b"MM"
    if big:
        header += struct.pack(order + "HHHQ", 43, 8, 0, ifd_at)
    else:
        header += struct.pack(order + "HI", 42, ifd_at)
    ifd = struct.pack(order + count, len(tags)) + entries + struct.pack(order + offset, 0)
    return header + data + ifd + extra


def pack_rows(samples, bits):
    """Rows of `bits`-bit samples packed from the high bit down, each padded to a byte."""
    per = 8 // bits
    shifts = 8 - bits * (np.arange(per) + 1)
    rows = []
    for row in samples.astype(np.uint16):
        row = np.concatenate([row, np.zeros(-len(row) % per, np.uint16)]).reshape(-1, per)
        rows.append((row << shifts).sum(axis=1).astype(np.uint8).tobytes())
    return rows


def palette_tiff(indices, bits, colour_map, order, big, rows_per_strip=H):
    rows = pack_rows(indices, bits)
    strips = [b"".join(rows[i : i + rows_per_strip]) for i in range(0, H, rows_per_strip)]
    tags = {
        256: (SHORT, [W]),
        257: (SHORT, [H]),
        258: (SHORT, [bits]),
        259: (SHORT, [1]),
        262: (SHORT, [3]),
        277: (SHORT, [1]),
        278: (SHORT, [rows_per_strip]),
        320: (SHORT, colour_map.reshape(-1).tolist()),
    }
    return tiff_file(tags, strips, order, big)


def indices(levels):
    y, x = np.mgrid[0:H, 0:W]
    return ((x * 3 + y * 5 + (x * y) // 7) % levels).astype(np.uint8)


def save(name, data):
    open(os.path.join(OUT, name), "wb").write(data)


def libtiff_rgb(name):
    """`name` decoded by libtiff's RGBA interface, top row first."""
    lib = ctypes.CDLL(ctypes.util.find_library("tiff"))
    lib.TIFFOpen.restype = ctypes.c_void_p
    lib.TIFFOpen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    lib.TIFFGetField.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p]
    lib.TIFFReadRGBAImageOriented.argtypes = [ctypes.c_void_p] + [ctypes.c_uint32] * 2 + [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.TIFFClose.argtypes = [ctypes.c_void_p]
    tif = lib.TIFFOpen(os.path.join(OUT, name).encode(), b"r")
    assert tif, name
    w, h = ctypes.c_uint32(), ctypes.c_uint32()
    lib.TIFFGetField(tif, 256, ctypes.byref(w))
    lib.TIFFGetField(tif, 257, ctypes.byref(h))
    raster = np.zeros((h.value, w.value), np.uint32)
    top_left, stop_on_error = 1, 1
    ok = lib.TIFFReadRGBAImageOriented(
        tif, w.value, h.value, raster.ctypes.data, top_left, stop_on_error
    )
    lib.TIFFClose(tif)
    assert ok, name
    # ABGR packed in words: R, G, B, A once the words are stored little-endian.
    rgba = raster.astype("<u4").view(np.uint8).reshape(h.value, w.value, 4)
    return np.ascontiguousarray(rgba[..., :3])


def palette_reference(name, idx, colour_map):
    """The colours of `name`, once tifffile reads its indices and map as written and
    libtiff decodes it to their top 8 bits."""
    with tifffile.TiffFile(os.path.join(OUT, name)) as t:
        page = t.pages[0]
        assert np.array_equal(page.asarray(), idx), name
        assert np.array_equal(page.colormap, colour_map), name
    want = np.ascontiguousarray(colour_map.T[idx])
    assert np.array_equal(libtiff_rgb(name), want >> 8), name
    return want


def palettes():
    rng = np.random.default_rng(7)
    # Pillow: 8-bit indices, LZW; it stores the colours as v·256.
    idx8 = indices(256)
    colours8 = rng.integers(0, 256, (3, 256))
    p = Image.fromarray(idx8, "P")
    p.putpalette(colours8.T.reshape(-1).astype(np.uint8).tolist())
    p.save(os.path.join(OUT, "palette8.tif"), compression="tiff_lzw")
    want = palette_reference("palette8.tif", idx8, colours8 << 8) >> 8
    save("palette8.png", imagecodecs.png_encode(want.astype(np.uint8)))

    cases = [
        ("palette4", 4, rng.integers(0, 256, (3, 16)) * 257, ">", False, 6),
        ("palette1", 1, np.array([[20, 250], [40, 160], [120, 30]]) * 257, "<", True, H),
        ("palette2_gray", 2, np.tile([[0, 200, 90, 255]], (3, 1)) * 257, ">", True, H),
    ]
    for name, bits, colour_map, order, big, rows_per_strip in cases:
        idx = indices(1 << bits)
        save(f"{name}.tif", palette_tiff(idx, bits, colour_map, order, big, rows_per_strip))
        want = (palette_reference(f"{name}.tif", idx, colour_map) // 257).astype(np.uint8)
        if name.endswith("gray"):
            want = np.ascontiguousarray(want[..., 0])
        save(f"{name}.png", imagecodecs.png_encode(want))

    colours16 = rng.integers(0, 65536, (3, 256)).astype(np.uint16)
    save("palette16.tif", palette_tiff(idx8, 8, colours16, "<", False))
    want = palette_reference("palette16.tif", idx8, colours16)
    save("palette16.png", imagecodecs.png_encode(want))


def rgb_pattern(h, w):
    y, x = np.mgrid[0:h, 0:w]
    planes = [x * 255 // (w - 1), y * 255 // (h - 1), 128 + 100 * np.sin(x / 3 + y / 5)]
    return np.stack(planes, axis=-1).astype(np.uint8)


def ycbcr():
    rgb = rgb_pattern(32, 40)
    # tifffile: whole JPEG streams per strip, 2×2 chroma subsampling.
    path = os.path.join(OUT, "ycbcr_jpeg.tif")
    tifffile.imwrite(
        path,
        rgb,
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": 90},
        subsampling=(2, 2),
        rowsperstrip=16,
        metadata=None,
    )
    with tifffile.TiffFile(path) as t:
        page = t.pages[0]
        assert page.photometric == 6 and page.compression == 7
        assert page.tags["YCbCrSubSampling"].value == (2, 2)
    save("ycbcr_jpeg.png", imagecodecs.png_encode(libtiff_rgb("ycbcr_jpeg.tif")))
    # libtiff (through Pillow): JPEGTables and abbreviated streams, 1×1.
    path = os.path.join(OUT, "ycbcr_jpeg_tables.tif")
    Image.fromarray(rgb).convert("YCbCr").save(path, compression="jpeg", quality=90)
    with tifffile.TiffFile(path) as t:
        page = t.pages[0]
        assert page.photometric == 6 and page.compression == 7
        assert "JPEGTables" in page.tags
    want = libtiff_rgb("ycbcr_jpeg_tables.tif")
    save("ycbcr_jpeg_tables.png", imagecodecs.png_encode(want))

    # Uncompressed, Rec. 709 coefficients, studio range.
    h, w = 9, 13
    y, x = np.mgrid[0:h, 0:w]
    codes = np.stack([16 + x * 219 // (w - 1), 16 + y * 224 // (h - 1), 240 - x * 17], -1)
    codes = np.clip(codes, 0, 255).astype(np.uint8)
    luma = [(2126, 10000), (7152, 10000), (722, 10000)]
    black_white = [16, 235, 128, 240, 128, 240]
    tags = {
        256: (SHORT, [w]),
        257: (SHORT, [h]),
        258: (SHORT, [8, 8, 8]),
        259: (SHORT, [1]),
        262: (SHORT, [6]),
        277: (SHORT, [3]),
        278: (SHORT, [h]),
        529: (RATIONAL, luma),
        530: (SHORT, [1, 1]),
        532: (RATIONAL, [(v, 1) for v in black_white]),
    }
    save("ycbcr.tif", tiff_file(tags, [codes.tobytes()]))
    # TIFF 6, section 21 and ReferenceBlackWhite: coding ranges 255 (Y) and 127 (Cb, Cr).
    lr, lg, lb = (n / d for n, d in luma)
    c = codes.astype(np.float64)
    full = lambda k, scale: (c[..., k] - black_white[2 * k]) * scale / (
        black_white[2 * k + 1] - black_white[2 * k]
    )
    yy, cb, cr = full(0, 255), full(1, 127), full(2, 127)
    r = yy + (2 - 2 * lr) * cr
    b = yy + (2 - 2 * lb) * cb
    g = (yy - lb * b - lr * r) / lg
    want = np.clip(np.stack([r, g, b], -1) / 255, 0, 1)
    assert np.abs(libtiff_rgb("ycbcr.tif") - want * 255).max() < 2.5
    save("ycbcr.png", imagecodecs.png_encode(np.round(want * 65535).astype(np.uint16)))


def planar():
    h, w = 5, 7
    y, x = np.mgrid[0:h, 0:w]
    rgba = np.stack([x * 9000 + 300, y * 12000 + 7, (x + y) * 5000 + 11, 65535 - x * y * 2000], -1)
    rgba = rgba.astype(np.uint16)
    path = os.path.join(OUT, "planar_rgba16.tif")
    tifffile.imwrite(
        path, rgba.transpose(2, 0, 1), planarconfig="separate", photometric="rgb",
        extrasamples=[2],
        compression="lzw", predictor=True,
    )
    with tifffile.TiffFile(path) as t:
        assert t.pages[0].planarconfig == 2
        assert np.array_equal(t.asarray().transpose(1, 2, 0), rgba)
    save("planar_rgba16.png", imagecodecs.png_encode(rgba))
    gray_alpha = np.stack([x * 30 + y * 7, 255 - x * y * 9], -1).astype(np.uint8)
    path = os.path.join(OUT, "planar_gray_alpha8.tif")
    tifffile.imwrite(
        path, gray_alpha.transpose(2, 0, 1), planarconfig="separate",
        photometric="minisblack", extrasamples=[2],
    )
    with tifffile.TiffFile(path) as t:
        assert t.pages[0].planarconfig == 2
        assert np.array_equal(t.asarray().transpose(1, 2, 0), gray_alpha)
    save("planar_gray_alpha8.png", imagecodecs.png_encode(gray_alpha))


def tiled_planar():
    h, w = 23, 37
    y, x = np.mgrid[0:h, 0:w]
    rgba = np.stack([x * 1700 + 300, y * 2800 + 7, (x + y) * 1000 + 11, 65535 - x * y * 70], -1)
    rgba = rgba.astype(np.uint16)
    for name, samples, compression in [
        ("tiled_planar_rgb8", (rgba[..., :3] >> 8).astype(np.uint8), None),
        ("tiled_planar_rgba16", rgba, "zlib"),
    ]:
        path = os.path.join(OUT, name + ".tif")
        alpha = {"extrasamples": [2]} if samples.shape[2] == 4 else {}
        tifffile.imwrite(
            path, samples.transpose(2, 0, 1), planarconfig="separate", photometric="rgb",
            tile=(16, 16), compression=compression, **alpha,
        )
        with tifffile.TiffFile(path) as t:
            assert t.pages[0].planarconfig == 2 and t.pages[0].is_tiled
            assert np.array_equal(t.asarray().transpose(1, 2, 0), samples)
        save(name + ".png", imagecodecs.png_encode(samples))


def compressed():
    h, w = 23, 37
    y, x = np.mgrid[0:h, 0:w]
    rgba = np.stack([x * 1700 + 300, y * 2800 + 7, (x + y) * 1000 + 11, 65535 - x * y * 70], -1)
    rgba = rgba.astype(np.uint16)
    lossless_webp = {"compressionargs": {"level": 101}}
    for name, samples, compression, options in [
        ("zstd_rgb16", rgba[..., :3], "zstd", {"predictor": True}),
        ("webp_rgb8", (rgba[..., :3] >> 8).astype(np.uint8), "webp", lossless_webp),
        ("webp_rgba8", (rgba >> 8).astype(np.uint8), "webp", {**lossless_webp, "extrasamples": [2]}),
    ]:
        samples = np.ascontiguousarray(samples)
        path = os.path.join(OUT, name + ".tif")
        tifffile.imwrite(
            path, samples, photometric="rgb", compression=compression, rowsperstrip=8, **options
        )
        with tifffile.TiffFile(path) as t:
            assert t.pages[0].compression in (50000, 50001)
            assert np.array_equal(t.asarray(), samples)
        save(name + ".png", imagecodecs.png_encode(samples))


def main():
    os.makedirs(OUT, exist_ok=True)
    palettes()
    planar()
    tiled_planar()
    compressed()
    ycbcr()


if __name__ == "__main__":
    main()
