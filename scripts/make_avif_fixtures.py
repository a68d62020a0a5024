#!/usr/bin/env python3
"""Writes the AVIF decoding fixtures with libavif's command-line tools.

Needs avifenc and avifdec from libavif on the PATH (Debian/Ubuntu: `apt install
libavif-bin`; written against libavif 0.11.1 built with libaom, dav1d and libyuv, as
Debian 12 ships it) and `pip install numpy pillow`. Run it as

    python3 scripts/make_avif_fixtures.py tests/fixtures/formats/avif

The source images are made here (37×23, odd on purpose: smooth gradients, a few sharp
edges, all channels different; an RGBA version with a varying alpha; a 16-bit version),
encoded with avifenc (libaom, speed 6, one thread) and decoded again with avifdec (dav1d),
so the tests compare our decoder with libavif's output, not with the encoder's input.
Everything lossy uses the fixed quantizer 10 of 63 (`--min 10 --max 10`), which keeps
AV1's transforms and loop filters in play (quantizer 0 switches AV1 to its separate
lossless mode, which only `-l` files use); alpha is always lossless (avifenc's default).
Every AVIF is under 3 KB. A rerun writes the same bytes.

AVIF files (OUT_DIR/):
  rgb8_444.avif                 8-bit 4:4:4, full range, CICP 1/13/6 (BT.601 matrix)
  rgb8_420.avif                 8-bit 4:2:0, limited range, CICP 1/13/1 (BT.709 matrix)
  rgb8_422.avif                 8-bit 4:2:2, limited range, CICP 1/13/6
  gray8_400.avif                8-bit monochrome (4:0:0), full range
  rgb10_444.avif                10-bit 4:4:4, full range, BT.601, from a 16-bit PNG
  rgb12_420.avif                12-bit 4:2:0, limited range, BT.709, from a 16-bit PNG
  rgba8_444.avif                8-bit 4:4:4 with an alpha item (auxl, lossless)
  rgba8_premultiplied.avif      the same with colour premultiplied by alpha (prem iref)
  lossless_identity.avif        `-l`: 4:4:4, identity matrix (CICP 1/13/0), AV1 lossless;
                                decodes to the source exactly
  irot1, imir0, imir1, irot1_imir0, irot3_imir1 (.avif)
                                lossless_identity plus irot (angle·90° anticlockwise)
                                and/or imir (axis 0: top and bottom exchanged, i.e. flipped
                                upside down; 1: left and right exchanged), in that order
  clap.avif                     lossless_identity plus a clean aperture made from the crop
                                rectangle x=3 y=2 w=30 h=18: clap 30/1 × 18/1, offsets
                                -1/2, -1/2 (the centre falls between pixels)
  grid_2x2.avif                 a 128×128 4:2:0 image stored as a 2×2 grid of 64×64 cells
                                (libavif wants grid cells of at least 64×64)
  icc.avif                      rgb8_444 with an ICC profile (LittleCMS's sRGB, 588 bytes)
                                in a colr 'prof' box, next to the nclx colr box that libavif
                                always writes; the PNGs carry it in iCCP
  exif.avif                     rgb8_444 with an Exif item (big-endian TIFF header, IFD0:
                                Make, Orientation = 6). avifenc also turns the Orientation
                                into the matching irot (angle 3), as libavif does for any
                                Exif it is given: the file is to be shown rotated once
  exif_irot0.avif               the same Exif, but `--irot 0`: an irot of angle 0, so the
                                file is not to be rotated (readers go by irot/imir, never
                                by the Exif Orientation)
  bt2020_pq.avif                10-bit 4:2:0, limited range, CICP 9/16/9 (BT.2020, PQ);
                                the PNGs hold the PQ-coded values (no transfer applied)
  p3_derived_420.avif           10-bit 4:2:0, full range, CICP 12/13/12: Display P3 with
                                the chromaticity-derived matrix (Kr, Kb from the primaries)
  anim.avif                     an image sequence ('avis'; colour and alpha tracks in moov,
                                plus the first frame as items) of three 37×23 4:4:4 RGBA
                                frames at 10 fps. Its mvhd/tkhd/mdhd times are set to 0
                                afterwards (avifenc writes the clock time there)
  truncated.avif                the first half of rgb8_420.avif's bytes, which ends inside
                                the meta box (must fail)
  truncated_mdat.avif           rgb8_420.avif with the ftyp and meta boxes whole but only
                                half of the mdat box (must fail)

Reference decodes (avifdec -c dav1d --png-compress 9):
  NAME.png                      files without chroma subsampling (4:4:4, 4:0:0)
  NAME.nearest.png, NAME.bilinear.png
                                4:2:0 and 4:2:2 files, `-u nearest` and `-u bilinear`
  anim.frameN.png               frame N of anim.avif (`--index N`)
  8-bit files decode to 8-bit PNGs (`-d 8`), 10- and 12-bit ones to 16-bit PNGs (`-d 16`,
  the samples scaled to 0–65535). avifdec writes RGB, or RGBA with straight (not
  premultiplied) alpha when there is an alpha item; 8-bit 4:0:0 without alpha becomes an
  8-bit gray PNG holding the Y plane as stored (so gray8_400 is full range). avifdec
  writes the stored image: it applies no clap, irot or imir.

  How avifdec turns YUV into RGB matters for the comparisons. With libyuv compiled in,
  8-bit YUV with the BT.601, BT.709 or BT.2020 matrix goes to 8-bit RGB through libyuv's
  fixed-point code (and 8-bit un-premultiplying through libyuv too). For full range that
  is within 1 level of the exact formulas (2 with bilinear upsampling), except that
  libyuv's bilinear filter handles an odd last column (and, for 4:2:0, an odd last row)
  its own way, up to ~10 levels apart. For limited range libyuv's blue coefficient is
  capped at 2.0, which puts saturated blues up to ~11 levels low (rgb8_420). Un-
  premultiplying multiplies those errors by 255/alpha. libavif's own
  floating-point code (the H.273 formulas, Cb/Cr = (v - 128)/224 and Y = (v - 16)/219 for
  limited range, (v - 128)/255 and v/255 for full; bilinear = 9/16, 3/16, 3/16, 1/16 of
  the nearest four chroma samples, repeated at the edges; each channel rounded from
  value·(2^depth - 1)) does everything else: the identity matrix, every 16-bit output.
  So for three files there is also the 16-bit decode by libavif's own code:
  NAME[.nearest|.bilinear].d16.png   rgb8_420, rgb8_422, rgba8_premultiplied (`-d 16`)
  info.json says for every PNG which code made it ("conversion") and how far each 8-bit
  PNG is from its .d16 twin ("max_diff_vs_d16", in 8-bit levels).

  NAME.oriented.png             for irot*, imir*, clap, exif and exif_irot0: NAME.png with
                                the file's clap, irot and imir applied in that order (here,
                                with numpy): what a viewer should show
  NAME.y4m                      for rgb8_420, rgb8_444, rgb10_444, gray8_400 and rgba8_444:
                                the YUV planes as decoded, before any conversion, to test
                                the YUV-to-RGB step on its own (avifdec's Y4M: 8-bit
                                samples, or 16-bit little-endian for 10 and 12 bits; chroma
                                planes of ceil(w/2) samples; C444alpha appends the alpha
                                plane; XCOLORRANGE gives the range)

  info.json                     per file: size, what it is, the avifenc and avifdec command
                                lines, `avifdec --info`'s report, the items, properties and
                                references read from the file (ispe, pixi, av1C, colr,
                                clap, irot, imir, auxC, grid, Exif, ...), the reference
                                PNGs, and for the .y4m files the header and the planes as
                                lists of rows
"""
import json, os, shutil, struct, subprocess, sys, tempfile, zlib

import numpy as np
from PIL import Image, ImageCms

W, H = 37, 23
LOSSY = ["--min", "10", "--max", "10"]
ENC = ["avifenc", "-c", "aom", "-s", "6", "-j", "1"]
DEC = ["avifdec", "-c", "dav1d", "-j", "1", "--png-compress", "9"]
Y4M_CASES = ["rgb8_420", "rgb8_444", "rgb10_444", "gray8_400", "rgba8_444"]


# ----------------------------------------------------------------------------------------
# Source images


def pattern(w, h, shift=0):
    """Floats in [0, 1], shape (h, w, 4): R, G, B, A, each with its own structure."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    x = (x + shift) % w
    u, v = x / (w - 1), y / (h - 1)
    r = u.copy()
    stripe = (x >= 0.65 * w) & (x < 0.65 * w + 4)
    r[stripe] = 1.0 - u[stripe]  # a sharp 4-pixel stripe against the ramp
    g = 0.1 + 0.8 * v
    g[y >= 0.65 * h] = 0.95 - 0.6 * v[y >= 0.65 * h]  # a sharp horizontal edge
    b = 0.5 + 0.45 * np.sin(2 * np.pi * (1.3 * u + 0.7 * v))
    checker = (x < 8) & (y < 8)
    b[checker] = ((x[checker] // 2 + y[checker] // 2) % 2) * 0.9 + 0.05  # 2×2 checkerboard
    a = np.clip(1.25 * u - 0.1, 0.0, 1.0)  # transparent left edge, opaque right part
    a[y < 3] = 1.0
    block = (x >= 0.8 * w) & (y >= 0.7 * h)
    a[block] = 0.0  # a fully transparent block over opaque pixels
    return np.stack([r, g, b, a], axis=-1)


def quantize(p, depth):
    top = (1 << depth) - 1
    return np.rint(p * top).astype(np.uint8 if depth == 8 else np.uint16)


def icc_profile():
    """LittleCMS's sRGB profile (588 bytes), its creation date fixed at 2024-01-01."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    assert icc[36:40] == b"acsp" and icc[84:100] == bytes(16)  # no profile ID to update
    icc[24:36] = struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
    return bytes(icc)


def zero_track_times(data):
    """Sets the creation and modification times of mvhd, tkhd and mdhd to 0, so that
    an image sequence comes out the same byte for byte on every run."""
    data = bytearray(data)

    def walk(start, end):
        for kind, s, e in boxes(data, start, end):
            if kind in ("moov", "trak", "mdia"):
                walk(s, e)
            elif kind in ("mvhd", "tkhd", "mdhd"):
                n = 8 if data[s] == 1 else 4
                data[s + 4:s + 4 + 2 * n] = bytes(2 * n)

    walk(0, len(data))
    return bytes(data)


def exif_blob(orientation=6):
    """A TIFF header and IFD0 = {Make: "infdit", Orientation: n} (what Pillow writes)."""
    exif = Image.Exif()
    exif[0x010F] = "infdit"
    exif[0x0112] = orientation
    data = exif.tobytes()
    if data.startswith(b"Exif\0\0"):
        data = data[6:]
    assert data[:4] in (b"II*\0", b"MM\0*"), data[:8]
    return data


def write_sources(tmp):
    src = {}
    p = pattern(W, H)
    for name, pixels in {
        "rgb8": quantize(p[..., :3], 8),
        "rgba8": quantize(p, 8),
        "rgb16": quantize(p[..., :3], 16),
        "grid8": quantize(pattern(128, 128)[..., :3], 8),
        **{f"frame{k}": quantize(pattern(W, H, shift=12 * k), 8) for k in range(3)},
    }.items():
        path = os.path.join(tmp, f"{name}.png")
        if pixels.dtype == np.uint16:
            # Pillow has no 16-bit RGB mode; write the PNG by hand.
            write_png16(path, pixels)
        else:
            Image.fromarray(pixels).save(path)
        src[name] = (path, pixels)
    src["icc"] = os.path.join(tmp, "srgb.icc")
    open(src["icc"], "wb").write(icc_profile())
    src["exif"] = os.path.join(tmp, "exif.bin")
    open(src["exif"], "wb").write(exif_blob())
    return src


def write_png16(path, pixels):

    h, w, c = pixels.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\0" + pixels[row].astype(">u2").tobytes() for row in range(h))

    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    open(path, "wb").write(png)


def read_png(path):
    im = Image.open(path)
    if im.mode in ("I;16", "I;16B", "I"):
        return np.array(im).astype(np.uint16)
    if im.mode in ("RGB", "RGBA", "L"):
        return np.array(im)
    raise ValueError(f"{path}: unexpected PNG mode {im.mode}")


def read_png16_rgb(path):
    """Pillow reads 16-bit RGB(A) PNGs as 8-bit; decode those by hand."""

    data = open(path, "rb").read()
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        payload = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", payload)
        elif kind == b"IDAT":
            idat += payload
        pos += 12 + n
    w, h, depth, color_type, _, _, interlace = ihdr
    assert interlace == 0
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    bpp = channels * depth // 8
    stride = w * bpp
    raw = zlib.decompress(idat)
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.int32)
    for row in range(h):
        f = raw[row * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, row * (stride + 1) + 1).astype(np.int32)
        cur = np.zeros(stride, np.int32)
        for i in range(stride):
            a = cur[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 0:
                pred = 0
            elif f == 1:
                pred = a
            elif f == 2:
                pred = b
            elif f == 3:
                pred = (a + b) // 2
            else:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[i] = (line[i] + pred) & 0xFF
        out[row] = cur
        prev = cur
    if depth == 16:
        return out.view(">u2").reshape(h, w, channels).astype(np.uint16), depth
    return out.reshape(h, w, channels), depth


# ----------------------------------------------------------------------------------------
# Cases: (name, source, avifenc options, description)


def cases(src):
    s8, sa, s16, g8 = src["rgb8"][0], src["rgba8"][0], src["rgb16"][0], src["grid8"][0]
    lossless = ["-l"]
    return [
        ("rgb8_444", [s8], ["-y", "444", "-r", "full", "--cicp", "1/13/6"] + LOSSY,
         "8-bit YUV 4:4:4, full range, CICP 1/13/6 (BT.601 matrix)"),
        ("rgb8_420", [s8], ["-y", "420", "-r", "limited", "--cicp", "1/13/1"] + LOSSY,
         "8-bit YUV 4:2:0, limited range, CICP 1/13/1 (BT.709 matrix)"),
        ("rgb8_422", [s8], ["-y", "422", "-r", "limited", "--cicp", "1/13/6"] + LOSSY,
         "8-bit YUV 4:2:2, limited range, CICP 1/13/6 (BT.601 matrix)"),
        ("gray8_400", [s8], ["-y", "400", "-r", "full"] + LOSSY,
         "8-bit monochrome (4:0:0), full range, luma of the RGB source"),
        ("rgb10_444", [s16], ["-d", "10", "-y", "444", "-r", "full", "--cicp", "1/13/6"] + LOSSY,
         "10-bit YUV 4:4:4, full range, BT.601 matrix (16-bit PNG source)"),
        ("rgb12_420", [s16], ["-d", "12", "-y", "420", "-r", "limited", "--cicp", "1/13/1"] + LOSSY,
         "12-bit YUV 4:2:0, limited range, BT.709 matrix (16-bit PNG source)"),
        ("rgba8_444", [sa], ["-y", "444", "-r", "full", "--cicp", "1/13/6"] + LOSSY,
         "8-bit 4:4:4 with a lossless alpha item (straight alpha)"),
        ("rgba8_premultiplied", [sa], ["-y", "444", "-r", "full", "--cicp", "1/13/6", "--premultiply"] + LOSSY,
         "8-bit 4:4:4 with alpha, colour premultiplied (prem iref)"),
        ("lossless_identity", [s8], lossless,
         "lossless: 4:4:4, identity matrix (MC 0), AV1 lossless mode"),
        ("irot1", [s8], lossless + ["--irot", "1"],
         "lossless_identity + irot angle 1 (90° anticlockwise)"),
        ("imir0", [s8], lossless + ["--imir", "0"],
         "lossless_identity + imir axis 0 (top and bottom exchanged)"),
        ("imir1", [s8], lossless + ["--imir", "1"],
         "lossless_identity + imir axis 1 (left and right exchanged)"),
        ("irot1_imir0", [s8], lossless + ["--irot", "1", "--imir", "0"],
         "lossless_identity + irot 1 then imir 0"),
        ("irot3_imir1", [s8], lossless + ["--irot", "3", "--imir", "1"],
         "lossless_identity + irot 3 (270° anticlockwise) then imir 1"),
        ("clap", [s8], lossless + ["--crop", "3,2,30,18"],
         "lossless_identity + clap from crop x=3 y=2 w=30 h=18 (offsets -1/2, -1/2)"),
        ("grid_2x2", [g8], ["--grid", "2x2", "-y", "420", "-r", "full", "--cicp", "1/13/6"] + LOSSY,
         "128x128 8-bit 4:2:0 as a 2x2 grid of 64x64 cells"),
        ("icc", [s8], ["-y", "444", "-r", "full", "--icc", src["icc"]] + LOSSY,
         "rgb8_444 + ICC profile (colr prof, Pillow's sRGB) besides the nclx colr"),
        ("exif", [s8], ["-y", "444", "-r", "full", "--exif", src["exif"]] + LOSSY,
         "rgb8_444 + Exif item with Orientation 6; avifenc adds the matching irot 3"),
        ("exif_irot0", [s8], ["-y", "444", "-r", "full", "--exif", src["exif"], "--irot", "0"] + LOSSY,
         "rgb8_444 + Exif item with Orientation 6 but irot 0: not to be rotated"),
        ("bt2020_pq", [s16], ["-d", "10", "-y", "420", "-r", "limited", "--cicp", "9/16/9"] + LOSSY,
         "10-bit 4:2:0, limited range, CICP 9/16/9 (BT.2020 primaries and matrix, PQ)"),
        ("p3_derived_420", [s16], ["-d", "10", "-y", "420", "-r", "full", "--cicp", "12/13/12"] + LOSSY,
         "10-bit 4:2:0, full range, CICP 12/13/12 (Display P3, matrix derived from the primaries)"),
        ("anim", [src[f"frame{k}"][0] for k in range(3)],
         ["-y", "444", "-r", "full", "--cicp", "1/13/6", "--fps", "10", "-k", "0"] + LOSSY,
         "image sequence (avis) of three 37x23 4:4:4 RGBA frames, 10 fps"),
    ]


# ----------------------------------------------------------------------------------------
# Reading the boxes (for info.json)


def boxes(data, start, end, clip=False):
    """(type, payload start, payload end) of each box; clip: let the last one run short."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
            header = 16
        elif size == 0:
            size = end - pos
        if clip and size >= header and pos + size > end:
            yield kind.decode("latin-1"), pos + header, end
            return
        if size < header or pos + size > end:
            raise ValueError(f"box '{kind.decode('latin-1')}' at {pos} runs past its parent")
        yield kind.decode("latin-1"), pos + header, pos + size
        pos += size


def parse_property(kind, d):
    if kind == "ispe":
        w, h = struct.unpack(">II", d[4:12])
        return {"width": w, "height": h}
    if kind == "pixi":
        return {"bits_per_channel": list(d[5:5 + d[4]])}
    if kind == "av1C":
        b1, b2 = d[1], d[2]
        return {
            "seq_profile": b1 >> 5, "seq_level_idx_0": b1 & 31, "seq_tier_0": b2 >> 7,
            "high_bitdepth": (b2 >> 6) & 1, "twelve_bit": (b2 >> 5) & 1, "monochrome": (b2 >> 4) & 1,
            "chroma_subsampling_x": (b2 >> 3) & 1, "chroma_subsampling_y": (b2 >> 2) & 1,
            "chroma_sample_position": b2 & 3, "config_obus_bytes": len(d) - 4,
        }
    if kind == "colr":
        ctype = d[:4].decode("latin-1")
        if ctype == "nclx":
            cp, tc, mc = struct.unpack(">HHH", d[4:10])
            return {"colour_type": ctype, "colour_primaries": cp, "transfer_characteristics": tc,
                    "matrix_coefficients": mc, "full_range": bool(d[10] >> 7)}
        return {"colour_type": ctype, "profile_bytes": len(d) - 4}
    if kind == "clap":
        v = struct.unpack(">IIIIiIiI", d[:32])
        return {"width": [v[0], v[1]], "height": [v[2], v[3]],
                "horiz_off": [v[4], v[5]], "vert_off": [v[6], v[7]]}
    if kind == "irot":
        return {"angle": d[0] & 3}
    if kind == "imir":
        return {"axis": d[0] & 1}
    if kind == "auxC":
        return {"aux_type": d[4:].split(b"\0")[0].decode()}
    if kind == "pasp":
        return dict(zip(["h_spacing", "v_spacing"], struct.unpack(">II", d[:8])))
    return {"bytes": len(d)}


def read_uint(d, pos, n):
    return int.from_bytes(d[pos:pos + n], "big") if n else 0


def parse_heif(data):
    out = {"top_level": []}
    meta = None
    for kind, s, e in boxes(data, 0, len(data), clip=True):
        size = struct.unpack(">I", data[s - 8:s - 4])[0]
        out["top_level"].append({"type": kind, "size": size})
        if s - 8 + size > len(data):
            out["top_level"][-1]["bytes_present"] = len(data) - (s - 8)
        if kind == "ftyp":
            out["major_brand"] = data[s:s + 4].decode("latin-1")
            out["compatible_brands"] = [data[p:p + 4].decode("latin-1") for p in range(s + 8, e, 4)]
        elif kind == "meta":
            meta = (s + 4, e)
    if meta is None:
        return out
    items, props, assoc, refs, iloc, idat, pitm = {}, [], {}, [], {}, b"", None
    for kind, s, e in boxes(data, *meta):
        d = data[s:e]
        if kind == "pitm":
            pitm = struct.unpack(">H" if d[0] == 0 else ">I", d[4:6] if d[0] == 0 else d[4:8])[0]
        elif kind == "iinf":
            first = s + (6 if d[0] == 0 else 8)
            for k2, s2, e2 in boxes(data, first, e):
                v = data[s2]
                if v >= 2:
                    n = 2 if v == 2 else 4
                    iid = read_uint(data, s2 + 4, n)
                    itype = data[s2 + 4 + n + 2:s2 + 4 + n + 6].decode("latin-1")
                    name = data[s2 + 4 + n + 6:e2].split(b"\0")[0].decode("latin-1")
                    items[iid] = {"id": iid, "type": itype, "name": name}
        elif kind == "iref":
            n = 2 if d[0] == 0 else 4
            for k2, s2, e2 in boxes(data, s + 4, e):
                src_id = read_uint(data, s2, n)
                count = read_uint(data, s2 + n, 2)
                to = [read_uint(data, s2 + n + 2 + i * n, n) for i in range(count)]
                refs.append({"type": k2, "from": src_id, "to": to})
        elif kind == "iprp":
            for k2, s2, e2 in boxes(data, s, e):
                if k2 == "ipco":
                    for k3, s3, e3 in boxes(data, s2, e2):
                        props.append({"type": k3, **parse_property(k3, data[s3:e3])})
                elif k2 == "ipma":
                    v, flags = data[s2], read_uint(data, s2 + 1, 3)
                    count = read_uint(data, s2 + 4, 4)
                    p = s2 + 8
                    for _ in range(count):
                        n = 2 if v < 1 else 4
                        iid = read_uint(data, p, n)
                        p += n
                        na = data[p]
                        p += 1
                        lst = []
                        for _ in range(na):
                            if flags & 1:
                                x = read_uint(data, p, 2)
                                p += 2
                                lst.append({"property": x & 0x7FFF, "essential": bool(x >> 15)})
                            else:
                                x = data[p]
                                p += 1
                                lst.append({"property": x & 0x7F, "essential": bool(x >> 7)})
                        assoc[iid] = lst
        elif kind == "iloc":
            v = d[0]
            off_size, len_size = d[4] >> 4, d[4] & 15
            base_size, idx_size = d[5] >> 4, (d[5] & 15) if v in (1, 2) else 0
            n_id = 2 if v < 2 else 4
            count = read_uint(d, 6, n_id)
            p = 6 + n_id
            for _ in range(count):
                iid = read_uint(d, p, n_id)
                p += n_id
                method = 0
                if v in (1, 2):
                    method = read_uint(d, p, 2) & 15
                    p += 2
                p += 2  # data_reference_index
                base = read_uint(d, p, base_size)
                p += base_size
                n_ext = read_uint(d, p, 2)
                p += 2
                ext = []
                for _ in range(n_ext):
                    p += idx_size
                    off = read_uint(d, p, off_size)
                    p += off_size
                    ln = read_uint(d, p, len_size)
                    p += len_size
                    ext.append((base + off, ln))
                iloc[iid] = (method, ext)
        elif kind == "idat":
            idat = d
    for iid, item in items.items():
        item["properties"] = [
            {**props[a["property"] - 1], "index": a["property"], "essential": a["essential"]}
            for a in assoc.get(iid, []) if a["property"] > 0
        ]
        if iid in iloc:
            method, ext = iloc[iid]
            item["construction_method"] = method
            item["extents"] = [list(x) for x in ext]
            payload = b"".join((idat if method == 1 else data)[o:o + n] for o, n in ext)
            if item["type"] == "grid" and len(payload) >= 8:
                flags = payload[1]
                n = 4 if flags & 1 else 2
                item["grid"] = {
                    "rows": payload[2] + 1, "columns": payload[3] + 1,
                    "output_width": read_uint(payload, 4, n),
                    "output_height": read_uint(payload, 4 + n, n),
                }
            elif item["type"] == "Exif" and len(payload) >= 4:
                offset = read_uint(payload, 0, 4)
                item["exif_tiff_header_offset"] = offset
                item["exif_tiff_header"] = payload[4 + offset:4 + offset + 4].hex()
    out["primary_item"] = pitm
    out["items"] = list(items.values())
    out["references"] = refs
    return out


# ----------------------------------------------------------------------------------------
# Y4M


def read_y4m(path):
    data = open(path, "rb").read()
    end = data.index(b"\n")
    header = data[:end].decode()
    fields = header.split()
    w = int(next(f[1:] for f in fields if f[0] == "W"))
    h = int(next(f[1:] for f in fields if f[0] == "H"))
    cs = next(f[1:] for f in fields if f[0] == "C")
    frame = data.index(b"FRAME\n", end) + 6
    depth = 10 if cs.endswith("p10") or cs == "mono10" else 12 if cs.endswith("p12") or cs == "mono12" else 8
    sample = 2 if depth > 8 else 1
    if cs.startswith("mono"):
        dims = [(w, h)]
    elif cs.startswith("420"):
        dims = [(w, h)] + [((w + 1) // 2, (h + 1) // 2)] * 2
    elif cs.startswith("422"):
        dims = [(w, h)] + [((w + 1) // 2, h)] * 2
    else:
        dims = [(w, h)] * 3
    if cs == "444alpha":
        dims.append((w, h))
    names = ["Y", "U", "V", "A"][:len(dims)] if len(dims) > 1 else ["Y"]
    planes, pos = {}, frame
    for name, (pw, ph) in zip(names, dims):
        n = pw * ph * sample
        arr = np.frombuffer(data[pos:pos + n], "<u2" if sample == 2 else np.uint8).reshape(ph, pw)
        planes[name] = arr.tolist()
        pos += n
    assert pos == len(data), f"{path}: {len(data) - pos} bytes left over"
    return {"header": header, "width": w, "height": h, "colorspace": cs, "depth": depth,
            "range": "full" if "XCOLORRANGE=FULL" in header else "limited",
            "plane_sizes": {n: list(d) for n, d in zip(names, dims)}, "planes": planes}


# ----------------------------------------------------------------------------------------
# Orientation (clap, irot, imir) for the .oriented.png references


def apply_transforms(pixels, heif):
    item = next(i for i in heif["items"] if i["id"] == heif["primary_item"])
    for prop in item["properties"]:
        if prop["type"] == "clap":
            h, w = pixels.shape[:2]
            cw = prop["width"][0] / prop["width"][1]
            ch = prop["height"][0] / prop["height"][1]
            cx = prop["horiz_off"][0] / prop["horiz_off"][1] + (w - 1) / 2
            cy = prop["vert_off"][0] / prop["vert_off"][1] + (h - 1) / 2
            x0, y0 = cx - (cw - 1) / 2, cy - (ch - 1) / 2
            assert cw.is_integer() and ch.is_integer() and x0.is_integer() and y0.is_integer()
            pixels = pixels[int(y0):int(y0 + ch), int(x0):int(x0 + cw)]
        elif prop["type"] == "irot":
            pixels = np.rot90(pixels, prop["angle"])  # anticlockwise
        elif prop["type"] == "imir":
            pixels = pixels[::-1] if prop["axis"] == 0 else pixels[:, ::-1]
    return np.ascontiguousarray(pixels)


# ----------------------------------------------------------------------------------------


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.returncode, (r.stdout + r.stderr)


def tool_version(tool):
    rc, text = run([tool, "--version"])
    return " ".join(text.split())


def describe_png(path):
    data = open(path, "rb").read()
    w, h, depth, color_type = struct.unpack(">IIBB", data[16:26])
    return {"file": os.path.basename(path), "bytes": len(data), "width": w, "height": h,
            "depth": depth, "channels": {0: 1, 2: 3, 4: 2, 6: 4}[color_type],
            "icc": b"iCCP" in data}


def info_field(text, label):
    return next(l.split(":", 1)[1].strip() for l in text.splitlines() if l.strip().startswith(f"* {label}"))


def conversion(depth, png_depth, fmt, mc, alpha):
    """Which code turns avifdec's YUV into the PNG's samples (libavif 0.11 with libyuv)."""
    if fmt == "YUV400" and depth == 8 and png_depth == 8 and alpha == "Absent":
        return "Y plane copied as stored"
    if depth == 8 and png_depth == 8 and mc in (1, 2, 5, 6, 9, 12):
        if alpha == "Premultiplied":
            return "libyuv (fixed point), un-premultiplied by libyuv"
        return "libyuv (fixed point)"
    return "libavif (floating point)"


def to_json(obj, indent=0):
    """JSON with lists of numbers kept on one line (the Y4M planes are long)."""
    pad, inner = " " * indent, " " * (indent + 1)
    flat = lambda v: isinstance(v, (int, float, str, bool)) or v is None
    if isinstance(obj, dict):
        if all(flat(v) or (isinstance(v, list) and all(map(flat, v))) for v in obj.values()) and (
                len(json.dumps(obj)) < 320):
            return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))
        items = [f"{inner}{json.dumps(k)}: {to_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(map(flat, obj)):
            return json.dumps(obj, separators=(",", ":"))
        return "[\n" + ",\n".join(inner + to_json(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


D16_CASES = ["rgb8_420", "rgb8_422", "rgba8_premultiplied"]
ORIENTED = ["irot1", "imir0", "imir1", "irot1_imir0", "irot3_imir1", "clap", "exif", "exif_irot0"]


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_avif_fixtures.py OUT_DIR")
    out = sys.argv[1]
    for tool in ("avifenc", "avifdec"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found on the PATH (libavif's tools; Debian: libavif-bin)")
    os.makedirs(out, exist_ok=True)
    info = {"avifenc": tool_version("avifenc"), "avifdec": tool_version("avifdec"), "files": {}}
    listing = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = write_sources(tmp)
        for name, inputs, opts, desc in cases(src):
            path = os.path.join(out, f"{name}.avif")
            cmd = ENC + opts + inputs + [path]
            rc, log = run(cmd)
            shown = " ".join([os.path.basename(a) if a.startswith(tmp) else a for a in cmd[:-1]]
                             + [f"{name}.avif"])
            if rc != 0:
                print(f"avifenc could not make {name}: {log.strip().splitlines()[-1]}")
                info["files"][name] = {"description": desc, "avifenc": shown, "error": log.strip()}
                continue
            info["files"][name] = {"file": f"{name}.avif", "description": desc, "avifenc": shown}
            if len(inputs) > 1:
                data = open(path, "rb").read()
                open(path, "wb").write(zero_track_times(data))
                info["files"][name]["changed_after_avifenc"] = "mvhd/tkhd/mdhd times set to 0"
            listing[f"{name}.avif"] = desc
        # The error case: rgb8_420 cut in half.
        data = open(os.path.join(out, "rgb8_420.avif"), "rb").read()
        open(os.path.join(out, "truncated.avif"), "wb").write(data[:len(data) // 2])
        desc = f"rgb8_420.avif's first {len(data) // 2} of {len(data)} bytes (must fail)"
        info["files"]["truncated"] = {"file": "truncated.avif", "description": desc}
        listing["truncated.avif"] = desc
        # And cut inside the AV1 payload, the boxes before it whole.
        mdat = next(s for kind, s, e in boxes(data, 0, len(data)) if kind == "mdat")
        cut = mdat + (len(data) - mdat) // 2
        open(os.path.join(out, "truncated_mdat.avif"), "wb").write(data[:cut])
        desc = f"rgb8_420.avif's first {cut} of {len(data)} bytes: mdat cut in half (must fail)"
        info["files"]["truncated_mdat"] = {"file": "truncated_mdat.avif", "description": desc}
        listing["truncated_mdat.avif"] = desc

        for name, entry in info["files"].items():
            if "file" not in entry:
                continue
            path = os.path.join(out, entry["file"])
            data = open(path, "rb").read()
            entry["bytes"] = len(data)
            try:
                entry["boxes"] = parse_heif(data)
            except Exception as e:  # the truncated file
                entry["boxes_error"] = str(e)
            rc, text = run(["avifdec", "--info", path])
            entry["avifdec_info"] = text.replace(path, entry["file"]).strip()
            entry["decodes"] = rc == 0
            if rc != 0:
                continue
            fmt, depth = info_field(text, "Format"), int(info_field(text, "Bit Depth"))
            mc = int(info_field(text, "Matrix Coeffs."))
            alpha = info_field(text, "Alpha")
            frames = int(text.rsplit("timescales),", 1)[1].split()[0]) if "timescales)," in text else 1
            jobs = []  # (png name, avifdec options, PNG depth)
            natural = 16 if depth > 8 else 8
            if frames > 1:
                jobs = [(f"{name}.frame{k}", ["--index", str(k)]) for k in range(frames)]
            elif fmt in ("YUV420", "YUV422"):
                jobs = [(f"{name}.{u}", ["-u", u]) for u in ("nearest", "bilinear")]
            else:
                jobs = [(name, [])]
            jobs = [(stem + ".png", opts, natural) for stem, opts in jobs] + (
                [(stem + ".d16.png", opts, 16) for stem, opts in jobs] if name in D16_CASES else [])
            refs = []
            for png, extra, png_depth in jobs:
                cmd = DEC + ["-d", str(png_depth)] + extra + [path, os.path.join(out, png)]
                rc, log = run(cmd)
                assert rc == 0, log
                conv = conversion(depth, png_depth, fmt, mc, alpha)
                refs.append({**describe_png(os.path.join(out, png)), "conversion": conv,
                             "avifdec": " ".join(DEC + ["-d", str(png_depth)] + extra + [entry["file"], png])})
                kind = {1: "gray", 3: "RGB", 4: "RGBA"}[refs[-1]["channels"]]
                how = " ".join(extra)
                listing[png] = f"{png_depth}-bit {kind}{', ' + how if how else ''}; {conv}"
            # How far libyuv's 8-bit output is from libavif's own conversion.
            for ref in refs:
                twin = ref["file"].replace(".png", ".d16.png")
                if ref["depth"] == 8 and any(r["file"] == twin for r in refs):
                    a = read_png(os.path.join(out, ref["file"])).astype(np.int64)
                    b, _ = read_png16_rgb(os.path.join(out, twin))
                    b = (b.astype(np.int64) * 255 + 32767) // 65535
                    ref["max_diff_vs_d16"] = int(np.abs(a - b).max())
            entry["references"] = refs
            if name in Y4M_CASES:
                y4m = os.path.join(out, f"{name}.y4m")
                rc, log = run(["avifdec", "-c", "dav1d", "-j", "1", path, y4m])
                assert rc == 0, log
                entry["y4m"] = {"file": f"{name}.y4m", "bytes": os.path.getsize(y4m),
                                "avifdec": f"avifdec -c dav1d -j 1 {entry['file']} {name}.y4m",
                                **read_y4m(y4m)}
                listing[f"{name}.y4m"] = f"decoded planes, {entry['y4m']['header'].split(' ', 6)[6]}"
            if name in ORIENTED:
                oriented = apply_transforms(read_png(os.path.join(out, f"{name}.png")), entry["boxes"])
                opath = os.path.join(out, f"{name}.oriented.png")
                Image.fromarray(oriented).save(opath, optimize=True)
                primary = next(i for i in entry["boxes"]["items"] if i["id"] == entry["boxes"]["primary_item"])
                applied = [p["type"] for p in primary["properties"] if p["type"] in ("clap", "irot", "imir")]
                entry["oriented"] = {**describe_png(opath), "applied": applied}
                listing[f"{name}.oriented.png"] = f"{name}.png after {', '.join(applied) or 'nothing'}"

        # Checks: the lossless files decode to the source exactly; the others stay close.
        src8 = src["rgb8"][1]
        for name in ["lossless_identity"] + [n for n in ORIENTED if not n.startswith("exif")]:
            got = read_png(os.path.join(out, f"{name}.png"))
            assert np.array_equal(got, src8), f"{name} is not lossless"
        for name, ref in (("rgb10_444", "rgb10_444.png"), ("rgb8_420", "rgb8_420.bilinear.d16.png"),
                          ("rgb12_420", "rgb12_420.bilinear.png")):
            got, depth = read_png16_rgb(os.path.join(out, ref))
            err = np.abs(got.astype(np.int64) - src["rgb16"][1].astype(np.int64)) / 65535
            info["files"][name]["error_vs_source"] = {"max": round(float(err.max()), 4),
                                                      "mean": round(float(err.mean()), 4)}
            # 4:2:0 smears the sharp colour edges (by up to a third of the range here).
            assert err.max() < 0.1 if "444" in name else err.mean() < 0.05, (name, err.max())

    open(os.path.join(out, "info.json"), "w").write(to_json(info) + "\n")
    listing["info.json"] = "what each file is, how it was made, avifdec --info, boxes, Y4M planes"
    total = 0
    print(f"{'file':30} {'bytes':>7}  what")
    for name in sorted(listing):
        size = os.path.getsize(os.path.join(out, name))
        total += size
        print(f"{name:30} {size:7}  {listing[name]}")
    print(f"{'total':30} {total:7}")


if __name__ == "__main__":
    main()
