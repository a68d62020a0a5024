#!/usr/bin/env python3
"""Writes the HEIC decoding fixtures with libheif (through pillow-heif) and libde265.

Needs `pip install pillow-heif==1.8.1 numpy pillow` (that wheel bundles libheif 1.23.6
with the x265 4.3 encoder and the libde265 1.1.3 decoder) and libde265's example decoder,
found as `dec265` or `libde265-dec265` on the PATH or named by the DEC265 environment
variable (Debian/Ubuntu: `apt install libde265-examples`, which installs it as
libde265-dec265; written against 1.0.11, as Debian 12 ships it). Run it as

    python3 scripts/make_heic_fixtures.py tests/fixtures/formats/heic [--decoder CMD]

The source images are made here (37x23 unless said otherwise: smooth colour gradients,
sharp edges that change brightness only, so that subsampled chroma stays smooth, all
channels different; an RGBA version with a varying alpha; 16-bit versions for the deeper
files), encoded by libheif with x265 at quality 50 and decoded again by libheif, so the
tests compare our decoder with libheif's output, not with the encoder's input. libheif
hands x265 no picture under 64x64 and no odd size: it pads the picture (to 64x64 here) and
adds a clean aperture ('clap') that crops it back, so every 37x23 file has a clap. Only
confwin_420 (67x65: padded to 68x66, which x265 pads to 72x72 with a conformance window in
the SPS) also exercises the HEVC conformance window. The transformed files, the grids and
the Exif orientation are made by editing or writing the boxes here. Every HEIC is under
2 KB. A rerun writes the same bytes.

The script stops unless libheif's decodes show what this docstring says: the edited files
decode exactly as rgb8_444.ref.png cropped, rotated and mirrored with numpy; exif_icc
decodes exactly as rgb8_444; libheif reports the grids as 2x2 grids of 64x64 tiles; each
16-bit reference sample is a multiple of 2^(16 - D); gray8's reference is the Y plane that
dec265 decodes, so libde265 1.0.11 and the one inside libheif agree.

With --decoder CMD, each file is also decoded by CMD, a command line around heic-decoder
0.1.1 (the crate the project decodes HEIC with): `CMD FILE rgb8|rgb16|rgba8|rgba16` must
write the decoded image, clap, irot and imir applied, as interleaved samples to stdout
(16-bit ones little-endian and scaled to 0-65535) and start its stderr with `WIDTH
HEIGHT`. info.json then says how far that is from each reference; without --decoder those
numbers are left out.

HEIC files (OUT_DIR/):
  rgb8_444.heic       8-bit 4:4:4, full range, nclx 1/13/6 (BT.601 matrix, pillow-heif's default)
  rgb8_420.heic       8-bit 4:2:0, otherwise as rgb8_444
  rgb8_422.heic       8-bit 4:2:2, otherwise as rgb8_444
  gray8.heic          8-bit monochrome from a Pillow "L" image; libheif writes 4:0:0
  rgb10_444.heic      10-bit 4:4:4 from a 16-bit source
  rgb10_420.heic      10-bit 4:2:0 from a 16-bit source
  rgb12_420.heic      12-bit 4:2:0 from a 16-bit source
  rgba8.heic          rgb8_444 plus an alpha item (auxl; 4:0:0, as lossy as the colour)
  rgba10.heic         10-bit 4:4:4 plus a 10-bit alpha item
  rgba8_prem.heic     rgba8 with the colour premultiplied by alpha before encoding and a
                      'prem' reference from the colour to the alpha item
  exif_icc.heic       rgb8_444 plus an Exif item (big-endian TIFF, IFD0: Make and
                      Orientation = 6, and no irot or imir in the file), an ICC profile
                      (Pillow's LittleCMS sRGB, 588 bytes) in a colr 'prof' box (libheif
                      then writes no nclx colr) and an XMP item (mime, application/rdf+xml)
  nclx_pq.heic        10-bit 4:2:0, limited range, nclx 9/16/9 (BT.2020 primaries and
                      matrix, PQ); the references hold the PQ-coded values
  limited_709.heic    8-bit 4:2:0, limited range, nclx 1/1/1 (BT.709)
  unspecified_matrix.heic
                      8-bit 4:4:4, full range, nclx 1/13/2: the matrix left unspecified,
                      which libheif takes as BT.601
  confwin_420.heic    67x65 8-bit 4:2:0: clap 67x65 of 68x66, and an SPS conformance window
                      cropping x265's 72x72 to 68x66
  irot1.heic, imir0.heic, imir1.heic, irot1_imir0.heic, irot3_imir1.heic
                      rgb8_444 plus irot (angle * 90 degrees anticlockwise) and/or imir
                      (axis 0: top and bottom exchanged; 1: left and right exchanged),
                      applied after the clap, in that order
  clap.heic           rgb8_444 with its clap replaced by one for the 29x17 rectangle at
                      x=5, y=3 of the 37x23 image (offsets -25/2, -41/2 in the 64x64 picture)
  clap_irot1.heic     clap plus irot 1
  grid.heic           a 100x90 'grid' item (2x2, output cropped at the right and bottom)
                      over four hidden 64x64 8-bit 4:2:0 hvc1 tiles encoded separately
                      (one shared hvcC), the grid's parameters in idat (iloc construction
                      method 1); colr and pixi shared by the grid and its tiles
  grid_rgba.heic      grid plus an alpha grid: a second 'grid' item with auxC (alpha) and
                      auxl to the colour grid, over four hidden 64x64 4:0:0 tiles

Reference decodes (libheif through pillow-heif, clap, irot and imir applied):
  NAME.ref.png        for every NAME.heic: 8-bit RGB, RGBA or gray for 8-bit files, 16-bit
                      for the 10- and 12-bit ones. pillow-heif widens a D-bit sample v to
                      16 bits as v << (16 - D) (1023 becomes 65472, not 65535). libheif does
                      not undo a premultiplication: rgba8_prem.ref.png holds the
                      premultiplied colour. libheif ignores the Exif orientation:
                      exif_icc.ref.png is not rotated. No PNG carries an ICC profile.
  NAME.yuv            for rgb8_420, rgb10_420 and confwin_420: the HEVC picture as libde265
                      decodes it (dec265 -o), conformance window applied, clap not: Y, then
                      Cb, then Cr, each row by row, the chroma planes ceil(w/2) x ceil(h/2);
                      8-bit samples, or 16-bit little-endian ones for 10 bits.
                      info.json gives each plane's size
  info.json           per file: size, how it was made, the decoded size, bit depth, chroma
                      format, alpha, premultiplication, nclx, ICC, Exif orientation,
                      transforms, items, properties and references read from the file, the
                      reference files and (with --decoder) the differences from heic-decoder
"""
import argparse, io, json, os, re, shlex, shutil, struct, subprocess, sys, tempfile, zlib
from fractions import Fraction

import numpy as np
import pillow_heif
from pillow_heif.constants import HeifCompressionFormat
from pillow_heif.misc import CtxEncode
from PIL import ImageCms

W, H = 37, 23
CONF_W, CONF_H = 67, 65
TILE, GRID_TILES, GRID_W, GRID_H = 64, 2, 100, 90  # a 2x2 grid of 64x64 tiles
QUALITY = 50
CROP = (5, 3, 29, 17)  # x, y, width, height of clap.heic's clean aperture in the image
YUV_CASES = ["rgb8_420", "rgb10_420", "confwin_420"]
ALPHA_AUX = b"urn:mpeg:hevc:2015:auxid:1"


# ----------------------------------------------------------------------------------------
# Source images


def pattern(w, h):
    """Floats in [0, 1], shape (h, w, 4): R, G, B and A, each with its own structure."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = x / (w - 1), y / (h - 1)
    rgb = np.stack([0.25 + 0.5 * u + 0.05 * np.sin(np.pi * v),
                    0.3 + 0.4 * v,
                    0.7 - 0.3 * u - 0.15 * v], axis=-1)
    # Sharp edges in brightness only: the same step added to R, G and B leaves Cb and Cr
    # as they were, under any matrix.
    step = np.zeros((h, w))
    x0 = int(0.6 * w)
    step[(x >= x0) & (x < x0 + 3)] += 0.2  # a 3-pixel stripe
    step[y >= int(0.6 * h)] -= 0.15  # a horizontal edge
    corner = (x < 6) & (y < 6)
    step[corner] += ((x[corner] // 2 + y[corner] // 2) % 2) * 0.2 - 0.1  # 2x2 checkerboard
    rgb = np.clip(rgb + step[..., None], 0.0, 1.0)
    a = np.clip(1.25 * u - 0.1, 0.0, 1.0)  # transparent left edge, opaque right part
    a[y < 3] = 1.0
    a[(x >= 0.8 * w) & (y >= 0.7 * h)] = 0.0  # a fully transparent block
    return np.concatenate([rgb, a[..., None]], axis=-1)


def quantize(p, bits):
    return np.rint(p * ((1 << bits) - 1)).astype(np.uint8 if bits == 8 else np.uint16)


def premultiply(p):
    return np.concatenate([p[..., :3] * p[..., 3:], p[..., 3:]], axis=-1)


def icc_profile():
    """LittleCMS's sRGB profile as Pillow makes it, its creation date set to 2024-01-01."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    assert icc[36:40] == b"acsp" and not any(icc[84:100])  # no profile ID to recompute
    icc[24:36] = struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
    return bytes(icc)


def exif_blob(orientation):
    """A big-endian TIFF header and IFD0 = {Make: "infdit", Orientation: orientation}."""
    make = b"infdit\0"
    data_at = 8 + 2 + 2 * 12 + 4
    return (b"MM\0*" + struct.pack(">I", 8) + struct.pack(">H", 2)
            + struct.pack(">HHII", 0x010F, 2, len(make), data_at)
            + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
            + struct.pack(">I", 0) + make)


XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
       b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
       b'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="infdit fixtures"/>'
       b'</rdf:RDF></x:xmpmeta>')


# ----------------------------------------------------------------------------------------
# Encoding with libheif


def pillow_mode(pixels, premultiplied=False):
    """pillow-heif's name for the layout of pixels (RGBa: premultiplied RGBA)."""
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    mode = {1: "L", 3: "RGB", 4: "RGBa" if premultiplied else "RGBA"}[channels]
    if pixels.dtype == np.uint16:
        mode = {"L": "I;16"}.get(mode, mode + ";16")
    return mode


def encode(pixels, chroma=None, bits=8, premultiplied=False, **options):
    """One image as a HEIC file. pillow-heif's encoder class is used directly (it is what
    pillow_heif.encode calls) so that image_orientation stays 1: pillow_heif.encode would
    turn an Exif Orientation into irot/imir."""
    h, w = pixels.shape[:2]
    ctx = CtxEncode(HeifCompressionFormat.HEVC, quality=QUALITY, chroma=chroma)
    ctx.add_image((w, h), pillow_mode(pixels, premultiplied),
                  pixels.astype(pixels.dtype.newbyteorder("<")).tobytes(),
                  primary=True, image_orientation=1, bit_depth=bits, **options)
    out = io.BytesIO()
    ctx.save(out)
    return out.getvalue()


def encoded_cases(src):
    """(name, description, how it was made, HEIC bytes) for the files libheif writes."""
    rgb8, rgba8 = quantize(src[..., :3], 8), quantize(src, 8)
    rgb16, rgba16 = quantize(src[..., :3], 16), quantize(src, 16)
    gray8 = quantize(src[..., :3] @ [0.299, 0.587, 0.114], 8)
    prem8 = quantize(premultiply(src), 8)
    conf8 = quantize(pattern(CONF_W, CONF_H)[..., :3], 8)
    pq = dict(color_primaries=9, transfer_characteristics=16, matrix_coefficients=9,
              full_range_flag=0)
    bt709 = dict(color_primaries=1, transfer_characteristics=1, matrix_coefficients=1,
                 full_range_flag=0)
    extras = dict(exif=exif_blob(6), icc_profile=icc_profile(), xmp=XMP)
    cases = [
        ("rgb8_444", "8-bit 4:4:4, full range, nclx 1/13/6", rgb8, dict(chroma=444)),
        ("rgb8_420", "8-bit 4:2:0, full range, nclx 1/13/6", rgb8, dict(chroma=420)),
        ("rgb8_422", "8-bit 4:2:2, full range, nclx 1/13/6", rgb8, dict(chroma=422)),
        ("gray8", "8-bit monochrome (4:0:0) from an L image", gray8, dict()),
        ("rgb10_444", "10-bit 4:4:4 from a 16-bit source", rgb16, dict(chroma=444, bits=10)),
        ("rgb10_420", "10-bit 4:2:0 from a 16-bit source", rgb16, dict(chroma=420, bits=10)),
        ("rgb12_420", "12-bit 4:2:0 from a 16-bit source", rgb16, dict(chroma=420, bits=12)),
        ("rgba8", "8-bit 4:4:4 with an alpha item", rgba8, dict(chroma=444)),
        ("rgba10", "10-bit 4:4:4 with a 10-bit alpha item", rgba16, dict(chroma=444, bits=10)),
        ("rgba8_prem", "rgba8 with premultiplied colour (prem iref)", prem8,
         dict(chroma=444, premultiplied=True)),
        ("exif_icc", "rgb8_444 + Exif (Orientation 6, no irot) + ICC (sRGB) + XMP", rgb8,
         dict(chroma=444, **extras)),
        ("nclx_pq", "10-bit 4:2:0, limited range, nclx 9/16/9 (BT.2020, PQ)", rgb16,
         dict(chroma=420, bits=10, **pq)),
        ("limited_709", "8-bit 4:2:0, limited range, nclx 1/1/1 (BT.709)", rgb8,
         dict(chroma=420, **bt709)),
        ("unspecified_matrix", "8-bit 4:4:4, full range, nclx 1/13/2 (matrix unspecified)",
         rgb8, dict(chroma=444, color_primaries=1, transfer_characteristics=13,
                    matrix_coefficients=2, full_range_flag=1)),
        ("confwin_420", f"{CONF_W}x{CONF_H} 8-bit 4:2:0: clap and an SPS conformance window",
         conf8, dict(chroma=420)),
    ]
    for name, desc, pixels, options in cases:
        shown = [f"{k}={v}" for k, v in options.items() if k not in extras]
        shown += [f"{k}=<{len(extras[k])} bytes>" for k in options if k in extras]
        mode = pillow_mode(pixels, options.get("premultiplied", False))
        made = ", ".join([f"pillow-heif, quality {QUALITY}, {pixels.shape[1]}x{pixels.shape[0]} "
                          f"{mode}"] + shown)
        yield name, desc, made, encode(pixels, **options)


# ----------------------------------------------------------------------------------------
# Boxes


def box(kind, payload):
    return struct.pack(">I4s", 8 + len(payload), kind.encode("latin-1")) + payload


def full_box(kind, version, flags, payload):
    return box(kind, struct.pack(">I", (version << 24) | flags) + payload)


def split(data):
    """[kind, payload] of each box in a run of boxes (32-bit sizes only)."""
    out, pos = [], 0
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size < 8 or pos + size > len(data):
            raise ValueError(f"box '{kind.decode('latin-1')}' at {pos} has size {size}")
        out.append([kind.decode("latin-1"), data[pos + 8:pos + size]])
        pos += size
    return out


def join(boxes):
    return b"".join(box(kind, payload) for kind, payload in boxes)


def child(boxes, kind):
    return next(b for b in boxes if b[0] == kind)


def uint(data, pos, n):
    return int.from_bytes(data[pos:pos + n], "big")


def parse_iloc(p):
    version = p[0]
    sizes = [p[4] >> 4, p[4] & 15, p[5] >> 4, p[5] & 15 if version else 0]
    off_size, len_size, base_size, idx_size = sizes
    id_size = 4 if version == 2 else 2
    count, pos = uint(p, 6, id_size), 6 + id_size
    items = []
    for _ in range(count):
        item = {"id": uint(p, pos, id_size), "method": 0}
        pos += id_size
        if version:
            item["method"] = uint(p, pos, 2) & 15
            pos += 2
        item["base"] = uint(p, pos + 2, base_size)  # after data_reference_index
        pos += 2 + base_size
        n, pos = uint(p, pos, 2), pos + 2
        item["extents"] = []
        for _ in range(n):
            off = uint(p, pos + idx_size, off_size)
            item["extents"].append([off, uint(p, pos + idx_size + off_size, len_size)])
            pos += idx_size + off_size + len_size
        items.append(item)
    return {"version": version, "sizes": sizes, "items": items}


def build_iloc(iloc):
    version, (off_size, len_size, base_size, idx_size) = iloc["version"], iloc["sizes"]
    id_size = 4 if version == 2 else 2
    out = bytes([off_size << 4 | len_size, base_size << 4 | idx_size])
    out += len(iloc["items"]).to_bytes(id_size, "big")
    for item in iloc["items"]:
        out += item["id"].to_bytes(id_size, "big")
        if version:
            out += item["method"].to_bytes(2, "big")
        out += bytes(2) + item["base"].to_bytes(base_size, "big")
        out += len(item["extents"]).to_bytes(2, "big")
        for off, length in item["extents"]:
            out += bytes(idx_size) + off.to_bytes(off_size, "big") + length.to_bytes(len_size, "big")
    return struct.pack(">I", version << 24) + out


def parse_ipma(p):
    """{item id: [[property index, essential], ...]} and the box's version and flags."""
    version, flags = p[0], uint(p, 1, 3)
    id_size, wide = (4 if version else 2), flags & 1
    count, pos, table = uint(p, 4, 4), 8, {}
    for _ in range(count):
        item, pos = uint(p, pos, id_size), pos + id_size
        n, pos = p[pos], pos + 1
        table[item] = []
        for _ in range(n):
            if wide:
                v, pos = uint(p, pos, 2), pos + 2
                table[item].append([v & 0x7FFF, bool(v >> 15)])
            else:
                v, pos = p[pos], pos + 1
                table[item].append([v & 0x7F, bool(v >> 7)])
    return version, flags, table


def build_ipma(version, flags, table):
    id_size, wide = (4 if version else 2), flags & 1
    out = struct.pack(">II", version << 24 | flags, len(table))
    for item, assoc in table.items():
        out += item.to_bytes(id_size, "big") + bytes([len(assoc)])
        for index, essential in assoc:
            out += ((essential << 15 | index).to_bytes(2, "big") if wide
                    else bytes([essential << 7 | index]))
    return out


def ispe(w, h):
    return full_box("ispe", 0, 0, struct.pack(">II", w, h))


def irot(angle):
    return box("irot", bytes([angle]))


def imir(axis):
    return box("imir", bytes([axis]))


def clap_for(crop, picture):
    """The clap box for the rectangle crop = (x, y, w, h) of a picture of size (W, H):
    its size and the offset of its centre from the picture's centre, as fractions."""
    x, y, w, h = crop
    off_x = Fraction(2 * x + w - picture[0], 2)
    off_y = Fraction(2 * y + h - picture[1], 2)
    return box("clap", struct.pack(">IIIIiIiI", w, 1, h, 1, off_x.numerator, off_x.denominator,
                                   off_y.numerator, off_y.denominator))


def clap_rect(payload, picture):
    """The rectangle (x, y, w, h) a clap payload selects from a picture of size (W, H)."""
    v = struct.unpack(">IIIIiIiI", payload[:32])
    w, h = Fraction(v[0], v[1]), Fraction(v[2], v[3])
    x = Fraction(v[4], v[5]) + Fraction(picture[0] - 1, 2) - (w - 1) / 2
    y = Fraction(v[6], v[7]) + Fraction(picture[1] - 1, 2) - (h - 1) / 2
    assert all(f.denominator == 1 for f in (x, y, w, h)), v
    return int(x), int(y), int(w), int(h)


# ----------------------------------------------------------------------------------------
# Reading a HEIF file


def read_heif(data):
    """The parts of a HEIF file the fixtures need, as plain values."""
    top = split(data)
    meta = split(child(top, "meta")[1][4:])
    ftyp = child(top, "ftyp")[1]
    heif = {"major_brand": ftyp[:4].decode("latin-1"),
            "compatible_brands": [ftyp[i:i + 4].decode("latin-1") for i in range(8, len(ftyp), 4)],
            "items": {}, "references": []}
    pitm = child(meta, "pitm")[1]
    heif["primary"] = uint(pitm, 4, 2 if pitm[0] == 0 else 4)
    iinf = child(meta, "iinf")[1]
    for _, infe in split(iinf[6 if iinf[0] == 0 else 8:]):
        n = 2 if infe[0] == 2 else 4
        iid = uint(infe, 4, n)
        heif["items"][iid] = {"id": iid, "type": infe[4 + n + 2:4 + n + 6].decode("latin-1"),
                              "hidden": bool(infe[3] & 1), "properties": []}
    iprp = split(child(meta, "iprp")[1])
    props = split(child(iprp, "ipco")[1])
    _, _, table = parse_ipma(child(iprp, "ipma")[1])
    idat = next((p for k, p in meta if k == "idat"), b"")
    for item in parse_iloc(child(meta, "iloc")[1])["items"]:
        source = idat if item["method"] == 1 else data
        heif["items"][item["id"]]["data"] = b"".join(
            source[item["base"] + off:item["base"] + off + n] for off, n in item["extents"])
    for iid, assoc in table.items():
        heif["items"][iid]["properties"] = [(props[i - 1][0], props[i - 1][1], essential)
                                            for i, essential in assoc if i]
    iref = next((p for k, p in meta if k == "iref"), None)
    if iref is not None:
        n = 2 if iref[0] == 0 else 4
        for kind, p in split(iref[4:]):
            count = uint(p, n, 2)
            heif["references"].append({"type": kind, "from": uint(p, 0, n),
                                       "to": [uint(p, n + 2 + i * n, n) for i in range(count)]})
    return heif


def prop(item, kind):
    return next((p for k, p, _ in item["properties"] if k == kind), None)


def hvcc_info(p):
    """The decoder configuration's chroma format, bit depths and NAL units."""
    nals, pos = [], 23
    for _ in range(p[22]):
        count, pos = uint(p, pos + 1, 2), pos + 3
        for _ in range(count):
            n = uint(p, pos, 2)
            nals.append(p[pos + 2:pos + 2 + n])
            pos += 2 + n
    return {"chroma_format_idc": p[16] & 3, "bit_depth_luma": (p[17] & 7) + 8,
            "bit_depth_chroma": (p[18] & 7) + 8, "length_size": (p[21] & 3) + 1, "nals": nals}


def annex_b(item):
    """An hvc1 item as an HEVC byte stream: its parameter sets, then its NAL units, each
    behind a start code."""
    config = hvcc_info(prop(item, "hvcC"))
    nals, data, pos, n = list(config["nals"]), item["data"], 0, config["length_size"]
    while pos < len(data):
        size = uint(data, pos, n)
        nals.append(data[pos + n:pos + n + size])
        pos += n + size
    return b"".join(b"\0\0\0\1" + nal for nal in nals)


def describe_property(kind, p, essential):
    out = {"type": kind}
    if kind == "ispe":
        out["width"], out["height"] = struct.unpack(">II", p[4:12])
    elif kind == "hvcC":
        out.update({k: v for k, v in hvcc_info(p).items() if k != "nals"})
    elif kind == "colr" and p[:4] == b"nclx":
        cp, tc, mc = struct.unpack(">HHH", p[4:10])
        out.update(colour_type="nclx", colour_primaries=cp, transfer_characteristics=tc,
                   matrix_coefficients=mc, full_range=bool(p[10] >> 7))
    elif kind == "colr":
        out.update(colour_type=p[:4].decode("latin-1"), profile_bytes=len(p) - 4)
    elif kind == "pixi":
        out["bits_per_channel"] = list(p[5:5 + p[4]])
    elif kind == "clap":
        v = struct.unpack(">IIIIiIiI", p[:32])
        out.update(width=v[0:2], height=v[2:4], horiz_off=v[4:6], vert_off=v[6:8])
    elif kind == "irot":
        out["angle"] = p[0] & 3
    elif kind == "imir":
        out["axis"] = p[0] & 1
    elif kind == "auxC":
        out["aux_type"] = p[4:].split(b"\0")[0].decode()
    else:
        out["bytes"] = len(p)
    out["essential"] = essential
    return out


def describe_item(item):
    out = {"id": item["id"], "type": item["type"], "hidden": item["hidden"],
           "bytes": len(item["data"]),
           "properties": [describe_property(*p) for p in item["properties"]]}
    if item["type"] == "grid":
        d = item["data"]
        n = 4 if d[1] & 1 else 2
        out["grid"] = {"rows": d[2] + 1, "columns": d[3] + 1,
                       "output_width": uint(d, 4, n), "output_height": uint(d, 4 + n, n)}
    if item["type"] == "Exif":
        out["exif_orientation"] = exif_orientation(item["data"])
    return out


def exif_orientation(payload):
    """The Orientation in IFD0 of an Exif item (4-byte offset to the TIFF header first)."""
    tiff = payload[4 + uint(payload, 0, 4):]
    end = ">" if tiff[:2] == b"MM" else "<"
    ifd = struct.unpack(end + "I", tiff[4:8])[0]
    for i in range(struct.unpack(end + "H", tiff[ifd:ifd + 2])[0]):
        tag, _, _, value = struct.unpack(end + "HHIH", tiff[ifd + 2 + 12 * i:ifd + 12 + 12 * i])
        if tag == 0x0112:
            return value
    return None


# ----------------------------------------------------------------------------------------
# Editing and writing HEIF files


TRANSFORMS = ["clap", "irot", "imir"]  # the order MIAF requires


def with_transforms(data, clap=None, added=()):
    """The file with the primary item's clap replaced by `clap` (a box) and the property
    boxes `added` (irot, imir) appended to ipco and associated with the primary item,
    essential, its transformative properties in MIAF's order: clap, irot, imir. The meta
    box grows, so every iloc offset into the rest of the file moves by as much."""
    top = split(data)
    meta_index = next(i for i, b in enumerate(top) if b[0] == "meta")
    meta_end = sum(8 + len(p) for _, p in top[:meta_index + 1])
    meta_head, meta = top[meta_index][1][:4], split(top[meta_index][1][4:])
    primary = uint(child(meta, "pitm")[1], 4, 2)
    iprp = split(child(meta, "iprp")[1])
    ipco = split(child(iprp, "ipco")[1])
    version, flags, table = parse_ipma(child(iprp, "ipma")[1])
    assoc = table[primary]
    if clap is not None:
        index = next(i for i, _ in assoc if ipco[i - 1][0] == "clap")
        assert sum(index in [i for i, _ in a] for a in table.values()) == 1  # not shared
        ipco[index - 1] = split(clap)[0]
    for new in added:
        ipco.append(split(new)[0])
        assoc.append([len(ipco), True])
    assoc.sort(key=lambda a: TRANSFORMS.index(ipco[a[0] - 1][0]) + 1
               if ipco[a[0] - 1][0] in TRANSFORMS else 0)  # stable: the rest keep their order
    child(iprp, "ipco")[1] = join(ipco)
    child(iprp, "ipma")[1] = build_ipma(version, flags, table)
    child(meta, "iprp")[1] = join(iprp)
    delta = len(meta_head + join(meta)) - len(top[meta_index][1])
    iloc = parse_iloc(child(meta, "iloc")[1])
    for item in iloc["items"]:
        if item["method"] != 0:
            continue
        if item["base"] >= meta_end:
            item["base"] += delta
        else:
            for extent in item["extents"]:
                if item["base"] + extent[0] >= meta_end:
                    extent[0] += delta
    child(meta, "iloc")[1] = build_iloc(iloc)
    top[meta_index][1] = meta_head + join(meta)
    return join(top)


def write_heif(items, references, primary):
    """A HEIF file from scratch. items: dicts with id, type, hidden, data, in_idat and
    properties [(box bytes, essential)]; equal property boxes are stored once. Item data
    goes into idat (iloc construction method 1) or mdat (method 0)."""
    ipco, table = [], {}
    for item in items:
        table[item["id"]] = []
        for p, essential in item["properties"]:
            if p not in ipco:
                ipco.append(p)
            table[item["id"]].append([ipco.index(p) + 1, essential])
    infe = b"".join(full_box("infe", 2, int(i["hidden"]), struct.pack(">HH4s", i["id"], 0,
                             i["type"].encode()) + b"\0") for i in items)
    iref = b"".join(box(kind, struct.pack(">HH", src, len(to)) + b"".join(
        struct.pack(">H", t) for t in to)) for kind, src, to in references)
    idat = b"".join(i["data"] for i in items if i["in_idat"])
    mdat = b"".join(i["data"] for i in items if not i["in_idat"])
    ftyp = box("ftyp", b"heic" + bytes(4) + b"mif1heic")

    def meta(mdat_start):
        iloc = {"version": 1, "sizes": [4, 4, 0, 0], "items": []}
        pos = {True: 0, False: mdat_start}
        for i in items:
            iloc["items"].append({"id": i["id"], "method": int(i["in_idat"]), "base": 0,
                                  "extents": [[pos[i["in_idat"]], len(i["data"])]]})
            pos[i["in_idat"]] += len(i["data"])
        return full_box("meta", 0, 0, b"".join([
            full_box("hdlr", 0, 0, bytes(4) + b"pict" + bytes(12) + b"\0"),
            full_box("pitm", 0, 0, struct.pack(">H", primary)),
            box("iloc", build_iloc(iloc)),
            full_box("iinf", 0, 0, struct.pack(">H", len(items)) + infe),
            full_box("iref", 0, 0, iref),
            box("iprp", box("ipco", b"".join(ipco))
                + box("ipma", build_ipma(0, 0, table))),
            box("idat", idat)]))

    start = len(ftyp) + len(meta(0)) + 8
    return ftyp + meta(start) + box("mdat", mdat)


def grid_files(src):
    """grid.heic and grid_rgba.heic: 2x2 grids of 64x64 tiles, each tile encoded alone
    by libheif; the tiles' hvcC, pixi and data are taken from those files."""
    colour = quantize(src[..., :3], 8)
    alpha = quantize(src[..., 3], 8)
    grid_data = struct.pack(">BBBBHH", 0, 0, GRID_TILES - 1, GRID_TILES - 1, GRID_W, GRID_H)

    def tiles(pixels, **options):
        out = []
        for row in range(GRID_TILES):
            for col in range(GRID_TILES):
                tile = pixels[row * TILE:(row + 1) * TILE, col * TILE:(col + 1) * TILE]
                heif = read_heif(encode(np.ascontiguousarray(tile), **options))
                item = heif["items"][heif["primary"]]
                assert [k for k, _, _ in item["properties"]] == ["hvcC", "colr", "ispe", "pixi"]
                out.append(item)
        return out

    def items(encoded, first_id, grid_props):
        grid = {"id": first_id, "type": "grid", "hidden": False, "data": grid_data,
                "in_idat": True, "properties": grid_props}
        cells = [{"id": first_id + 1 + k, "type": "hvc1", "hidden": True, "data": t["data"],
                  "in_idat": False,
                  "properties": [(box(kind, p), e) for kind, p, e in t["properties"]]}
                 for k, t in enumerate(encoded)]
        return [grid] + cells

    def dimg(grid_and_cells):
        return ("dimg", grid_and_cells[0]["id"], [c["id"] for c in grid_and_cells[1:]])

    colour_tiles = tiles(colour, chroma=420)
    colr = box("colr", prop(colour_tiles[0], "colr"))
    pixi = box("pixi", prop(colour_tiles[0], "pixi"))
    colour_items = items(colour_tiles, 1, [(ispe(GRID_W, GRID_H), False), (colr, False),
                                           (pixi, False)])
    grid = write_heif(colour_items, [dimg(colour_items)], 1)
    alpha_tiles = tiles(alpha)
    aux = full_box("auxC", 0, 0, ALPHA_AUX + b"\0")
    alpha_items = items(alpha_tiles, len(colour_items) + 1, [
        (ispe(GRID_W, GRID_H), False), (box("pixi", prop(alpha_tiles[0], "pixi")), False),
        (aux, True)])
    grid_rgba = write_heif(colour_items + alpha_items,
                           [dimg(colour_items), dimg(alpha_items),
                            ("auxl", alpha_items[0]["id"], [colour_items[0]["id"]])], 1)
    made = (f"{len(colour_tiles)} tiles encoded by pillow-heif (quality {QUALITY}, 4:2:0), "
            "assembled here")
    return [("grid", f"{GRID_W}x{GRID_H} grid (2x2 of 64x64 4:2:0 tiles)", made, grid),
            ("grid_rgba", f"{GRID_W}x{GRID_H} grid with an alpha grid (auxl)",
             made + "; alpha tiles from L images", grid_rgba)]


# name: (whether the clap is replaced by CROP's, the irot and imir added)
EDITS = {
    "irot1": (False, [("irot", 1)]),
    "imir0": (False, [("imir", 0)]),
    "imir1": (False, [("imir", 1)]),
    "irot1_imir0": (False, [("irot", 1), ("imir", 0)]),
    "irot3_imir1": (False, [("irot", 3), ("imir", 1)]),
    "clap": (True, []),
    "clap_irot1": (True, [("irot", 1)]),
}


def transformed_cases(base):
    """(name, description, how it was made, HEIC bytes) of rgb8_444 with irot, imir and
    a new clap."""
    heif = read_heif(base)
    item = heif["items"][heif["primary"]]
    picture = struct.unpack(">II", prop(item, "ispe")[4:12])
    x0, y0, _, _ = clap_rect(prop(item, "clap"), picture)
    clap = clap_for((x0 + CROP[0], y0 + CROP[1], CROP[2], CROP[3]), picture)
    for name, (new_clap, added) in EDITS.items():
        added = [{"irot": irot, "imir": imir}[kind](value) for kind, value in added]
        parts = ([f"clap {CROP[2]}x{CROP[3]} at x={CROP[0]} y={CROP[1]}"] if new_clap else []) + [
            f"{split(b)[0][0]} {split(b)[0][1][0]}" for b in added]
        yield (name, "rgb8_444 + " + ", ".join(parts), "rgb8_444.heic with its boxes edited",
               with_transforms(base, clap if new_clap else None, added))


# ----------------------------------------------------------------------------------------
# References


def libheif_decode(data):
    """The primary image as libheif decodes it, the pillow-heif mode and info."""
    heif = pillow_heif.open_heif(data, convert_hdr_to_8bit=False)
    return np.asarray(heif), heif.mode, heif.info


def write_png(path, pixels):
    """An 8- or 16-bit PNG with 1 to 4 channels, whichever filter type packs smallest."""
    pixels = pixels if pixels.ndim == 3 else pixels[..., None]
    h, w, c = pixels.shape
    depth = pixels.dtype.itemsize * 8
    raw = pixels.astype(pixels.dtype.newbyteorder(">")).view(np.uint8).reshape(h, -1)
    raw = raw.astype(np.int32)
    bpp = c * depth // 8
    left = np.pad(raw, ((0, 0), (bpp, 0)))[:, :-bpp]
    up = np.pad(raw, ((1, 0), (0, 0)))[:-1]
    up_left = np.pad(up, ((0, 0), (bpp, 0)))[:, :-bpp]
    pa, pb, pc = abs(up - up_left), abs(left - up_left), abs(left + up - 2 * up_left)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
    best = None
    for kind, pred in enumerate([0, left, up, (left + up) // 2, paeth]):
        rows = np.concatenate([np.full((h, 1), kind), (raw - pred) & 0xFF], axis=1)
        packed = zlib.compress(rows.astype(np.uint8).tobytes(), 9)
        best = packed if best is None or len(packed) < len(best) else best

    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth,
                                                                color_type, 0, 0, 0))
                + chunk(b"IDAT", best) + chunk(b"IEND", b""))


def dec265_tool():
    for tool in [os.environ.get("DEC265"), "dec265", "libde265-dec265"]:
        if tool and shutil.which(tool):
            return shutil.which(tool)
    sys.exit("libde265's dec265 not found (PATH or DEC265; Debian: libde265-examples)")


def dec265_planes(tool, item, tmp):
    """The picture libde265 decodes from an hvc1 item: the planes dec265 -o writes and the
    SPS fields its header dump shows."""
    stream, yuv = os.path.join(tmp, "item.265"), os.path.join(tmp, "item.yuv")
    with open(stream, "wb") as f:
        f.write(annex_b(item))
    r = subprocess.run([tool, "-q", "-d", "-o", yuv, stream], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    sps = {k: int(v) for k, v in re.findall(r"(\w+)\s*: (\d+)", r.stdout + r.stderr)}
    sub_x, sub_y = {0: (1, 1), 1: (2, 2), 2: (2, 1), 3: (1, 1)}[sps["chroma_format_idc"]]
    w = sps["pic_width_in_luma_samples"]
    h = sps["pic_height_in_luma_samples"]
    if sps.get("conformance_window_flag"):
        w -= sub_x * (sps["conf_win_left_offset"] + sps["conf_win_right_offset"])
        h -= sub_y * (sps["conf_win_top_offset"] + sps["conf_win_bottom_offset"])
    planes = [(w, h)]
    if sps["chroma_format_idc"]:
        planes += [(-(-w // sub_x), -(-h // sub_y))] * 2
    depth = sps["bit_depth_luma"]
    with open(yuv, "rb") as f:
        data = f.read()
    assert len(data) == sum(pw * ph for pw, ph in planes) * (2 if depth > 8 else 1)
    fields = ["chroma_format_idc", "pic_width_in_luma_samples", "pic_height_in_luma_samples",
              "conformance_window_flag", "conf_win_left_offset", "conf_win_right_offset",
              "conf_win_top_offset", "conf_win_bottom_offset", "bit_depth_luma",
              "bit_depth_chroma"]
    return data, {"sps": {k: sps[k] for k in fields if k in sps}, "depth": depth,
                  "planes": dict(zip(["Y", "Cb", "Cr"], [list(p) for p in planes]))}


def decoder_diff(cmd, path, reference, bits):
    """How far the --decoder command's output is from a reference, in the reference's
    units: its 16-bit samples are first brought to the file's depth, then widened as
    pillow-heif widens them."""
    alpha = reference.ndim == 3 and reference.shape[2] == 4
    fmt = ("rgba" if alpha else "rgb") + ("16" if reference.dtype == np.uint16 else "8")
    r = subprocess.run(cmd + [path, fmt], capture_output=True)
    if r.returncode != 0:
        return {"heic_decoder_error": r.stderr.decode(errors="replace").strip()[-300:]}
    w, h = map(int, r.stderr.split()[:2])
    got = np.frombuffer(r.stdout, "<u2" if fmt.endswith("16") else np.uint8)
    got = got.reshape(h, w, len(fmt.rstrip("0123456789"))).astype(np.int64)
    if fmt.endswith("16"):
        top = (1 << bits) - 1
        got = ((got * top + 32767) // 65535) << (16 - bits)
    want = reference.astype(np.int64)
    if want.ndim == 2:
        want = np.repeat(want[..., None], 3, axis=2)
    if got.shape != want.shape:
        return {"heic_decoder_error": f"decoded {w}x{h}, the reference is "
                                      f"{want.shape[1]}x{want.shape[0]}"}
    diff = np.abs(got - want)
    return {"max_diff_vs_heic_decoder": int(diff.max()),
            "mean_diff_vs_heic_decoder": round(float(diff.mean()), 4)}


# ----------------------------------------------------------------------------------------
# info.json


def summary(data, decoded, mode, info):
    heif = read_heif(data)
    item = heif["items"][heif["primary"]]
    coded = item if item["type"] == "hvc1" else heif["items"][next(
        r["to"][0] for r in heif["references"] if r["type"] == "dimg" and r["from"] == item["id"])]
    config = hvcc_info(prop(coded, "hvcC"))
    nclx = next((describe_property("colr", p, e) for k, p, e in item["properties"]
                 if k == "colr" and p[:4] == b"nclx"), None)
    alpha = [r["from"] for r in heif["references"] if r["type"] == "auxl" and item["id"] in r["to"]]
    exif = [i for i in heif["items"].values() if i["type"] == "Exif"]
    return {
        "width": decoded.shape[1], "height": decoded.shape[0],
        "bit_depth": config["bit_depth_luma"],
        "chroma": {0: "4:0:0", 1: "4:2:0", 2: "4:2:2", 3: "4:4:4"}[config["chroma_format_idc"]],
        "alpha": bool(alpha),
        "premultiplied": any(r["type"] == "prem" and r["from"] == item["id"]
                             for r in heif["references"]),
        "nclx": {k: v for k, v in (nclx or {}).items()
                 if k not in ("type", "colour_type", "essential")} or None,
        "icc": next((len(p) - 4 for k, p, _ in item["properties"]
                     if k == "colr" and p[:4] in (b"prof", b"rICC")), None),
        "exif_orientation": exif_orientation(exif[0]["data"]) if exif else None,
        "xmp": any(i["type"] == "mime" for i in heif["items"].values()),
        "transforms": [describe_property(k, p, e) for k, p, e in item["properties"]
                       if k in TRANSFORMS],
        "libheif": {"mode": mode, "bit_depth": info["bit_depth"],
                    "chroma": info.get("chroma"), "tiling": info.get("tiling")},
        "major_brand": heif["major_brand"],
        "compatible_brands": heif["compatible_brands"],
        "primary_item": heif["primary"],
        "items": [describe_item(i) for i in heif["items"].values()],
        "references": heif["references"],
    }


def to_json(value, indent=0):
    """JSON whose small objects and lists of numbers stay on one line."""
    if isinstance(value, (dict, list)) and (len(json.dumps(value)) < 200 or (
            isinstance(value, list) and all(isinstance(v, (int, float)) for v in value))):
        return json.dumps(value, ensure_ascii=False)
    pad = " " * (indent + 1)
    if isinstance(value, dict):
        body = ",\n".join(f"{pad}{json.dumps(k)}: {to_json(v, indent + 1)}"
                          for k, v in value.items())
        return "{\n" + body + "\n" + " " * indent + "}"
    if isinstance(value, list):
        return "[\n" + ",\n".join(pad + to_json(v, indent + 1) for v in value) + "\n" + " " * indent + "]"
    return json.dumps(value, ensure_ascii=False)


# ----------------------------------------------------------------------------------------
# Checks


def check(name, ref, refs, entry, info):
    """What libheif's decodes must show, so that a change in the tools is noticed."""
    if entry["bit_depth"] > 8:  # widened by a shift
        assert not (ref.astype(np.int64) % (1 << (16 - entry["bit_depth"]))).any(), name
    if name in EDITS:
        want = refs["rgb8_444"]
        if EDITS[name][0]:
            x, y, w, h = CROP
            want = want[y:y + h, x:x + w]
        for t in entry["transforms"]:
            if t["type"] == "irot":
                want = np.rot90(want, t["angle"])  # anticlockwise
            elif t["type"] == "imir":
                want = want[::-1] if t["axis"] == 0 else want[:, ::-1]
        assert np.array_equal(ref, want), name
    if name.startswith("grid"):
        assert info["tiling"]["num_columns"] == GRID_TILES and info["tiling"]["tile_width"] == TILE
    if name == "exif_icc":
        assert entry["exif_orientation"] == 6
        assert [t["type"] for t in entry["transforms"]] == ["clap"]  # libheif's, nothing else
        assert np.array_equal(ref, refs["rgb8_444"]), "libheif rotated by the Exif orientation"


def main():
    parser = argparse.ArgumentParser(description="Writes the HEIC decoding fixtures.")
    parser.add_argument("out_dir")
    parser.add_argument("--decoder", help="a heic-decoder command line: CMD FILE FORMAT")
    args = parser.parse_args()
    decoder = shlex.split(args.decoder) if args.decoder else None
    dec265 = dec265_tool()
    version = subprocess.run([dec265, "-h"], capture_output=True, text=True)
    os.makedirs(args.out_dir, exist_ok=True)
    info = {
        "pillow_heif": pillow_heif.__version__,
        "libheif": pillow_heif.libheif_info(),
        "dec265": (version.stdout + version.stderr).split("\n")[0].strip(),
        "references": "NAME.ref.png: libheif's decode through pillow-heif (open_heif, "
                      "convert_hdr_to_8bit=False), clap, irot and imir applied. 10- and "
                      "12-bit samples v are widened to 16 bits as v << (16 - depth). "
                      "rgba8_prem.ref.png holds premultiplied colour (libheif leaves it so). "
                      "NAME.yuv: dec265 -o, conformance window applied, clap not.",
        "diff_units": "max/mean_diff_vs_heic_decoder are in the reference PNG's units; "
                      "for the 16-bit references the decoder's 0-65535 samples are first "
                      "rounded to the file's depth and widened like the reference, so one "
                      "10-bit step is 64 and one 12-bit step is 16",
        "heic_decoder_compared": decoder is not None,
        "files": {},
    }
    src = pattern(W, H)
    cases = list(encoded_cases(src))
    cases += list(transformed_cases(cases[0][3]))
    cases += grid_files(pattern(GRID_TILES * TILE, GRID_TILES * TILE))
    listing, refs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, desc, made, data in cases:
            path = os.path.join(args.out_dir, f"{name}.heic")
            with open(path, "wb") as f:
                f.write(data)
            ref, mode, libheif_info = libheif_decode(data)
            refs[name] = ref
            write_png(os.path.join(args.out_dir, f"{name}.ref.png"), ref)
            entry = {"file": f"{name}.heic", "bytes": len(data), "description": desc,
                     "made": made, **summary(data, ref, mode, libheif_info)}
            entry["reference"] = {"file": f"{name}.ref.png", "mode": mode,
                                  "depth": ref.dtype.itemsize * 8,
                                  "channels": 1 if ref.ndim == 2 else ref.shape[2],
                                  "alpha": "premultiplied" if mode.startswith("RGBa") else
                                  "straight" if "A" in mode else None}
            check(name, ref, refs, entry, libheif_info)
            if decoder:
                entry.update(decoder_diff(decoder, path, ref, entry["bit_depth"]))
            if name in YUV_CASES + ["gray8"]:
                heif = read_heif(data)
                planes, yuv = dec265_planes(dec265, heif["items"][heif["primary"]], tmp)
                if name == "gray8":  # libde265 here and in libheif agree: Y is the L image
                    w, h = yuv["planes"]["Y"]
                    y = np.frombuffer(planes, np.uint8).reshape(h, w)
                    assert np.array_equal(y[:ref.shape[0], :ref.shape[1]], ref)
                else:
                    with open(os.path.join(args.out_dir, f"{name}.yuv"), "wb") as f:
                        f.write(planes)
                    entry["yuv"] = {"file": f"{name}.yuv", "bytes": len(planes), **yuv}
                    listing[f"{name}.yuv"] = "dec265's planes, {}x{}, {}-bit".format(
                        *yuv["planes"]["Y"], yuv["depth"])
            info["files"][name] = entry
            listing[f"{name}.heic"] = desc
            listing[f"{name}.ref.png"] = f"libheif's decode, {mode}"
    with open(os.path.join(args.out_dir, "info.json"), "w") as f:
        f.write(to_json(info) + "\n")
    listing["info.json"] = "what each file is and holds, and the comparisons"
    total = 0
    for name in sorted(listing):
        size = os.path.getsize(os.path.join(args.out_dir, name))
        total += size
        print(f"{name:26} {size:7}  {listing[name]}")
    print(f"{'total':26} {total:7}")


if __name__ == "__main__":
    main()
