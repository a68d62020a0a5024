#!/usr/bin/env python3
"""Writes the JPEG XL and AVIF decoding fixtures with the reference encoders.

Needs `pip install numpy imagecodecs` (imagecodecs bundles libjxl and libavif).
Each image comes with the PNG its reference decoder gives, so the tests compare our
decoders with libjxl's and libavif's output, not with the encoder's input.

Outputs (tests/fixtures/formats/):
  rgb8.jxl, rgb8.png                 lossless 8-bit RGB (decodes to the source exactly)
  rgba16.jxl, rgba16.png             lossless 16-bit RGBA
  gray8.jxl, gray8.png               lossless 8-bit grayscale
  lossy.jxl, lossy.png               lossy (VarDCT, distance 1), reference decode
  anim.jxl                           an animation of three 8×8 frames
  exif_container.jxl                 rgb8's codestream in a container with an Exif box
                                     that says "rotate 90°", which JPEG XL readers ignore:
                                     the codestream's own orientation governs
"""
import io, os, struct

import imagecodecs
import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "formats")
H, W = 17, 23


def pattern(channels, depth):
    y, x = np.mgrid[0:H, 0:W]
    top = (1 << depth) - 1
    planes = [
        (x * top) // (W - 1),
        (y * top) // (H - 1),
        ((x * 7 + y * 13) % 29) * top // 28,
        np.where((x + y) % 5 == 0, top // 3, top),
    ]
    dtype = np.uint8 if depth == 8 else np.uint16
    return np.stack(planes[:channels], axis=-1).astype(dtype).squeeze()


def png(name, pixels):
    open(os.path.join(OUT, name), "wb").write(imagecodecs.png_encode(pixels))


def tiff_exif(orientation):
    """A little-endian TIFF header with IFD0 = {Make: "infdit", Orientation: n}."""
    make = b"infdit\0\0"
    entries = [(0x010F, 2, len(make), 8 + 2 + 2 * 12 + 4), (0x0112, 3, 1, orientation)]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if kind == 3:
            ifd += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            ifd += struct.pack("<HHII", tag, kind, count, value)
    return b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + make


def box(kind, payload):
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def main():
    os.makedirs(OUT, exist_ok=True)
    rgb8 = pattern(3, 8)
    codestream = imagecodecs.jpegxl_encode(rgb8, lossless=True)
    cases = {
        "rgb8": (rgb8, codestream),
        "rgba16": (p := pattern(4, 16), imagecodecs.jpegxl_encode(p, lossless=True)),
        "gray8": (p := pattern(1, 8), imagecodecs.jpegxl_encode(p, lossless=True)),
        "lossy": (rgb8, imagecodecs.jpegxl_encode(rgb8, distance=1.0)),
    }
    for name, (source, data) in cases.items():
        decoded = imagecodecs.jpegxl_decode(data)
        if name != "lossy":
            assert np.array_equal(decoded, source), name
        open(os.path.join(OUT, f"{name}.jxl"), "wb").write(data)
        png(f"{name}.png", decoded)
    assert codestream[:2] == b"\xff\x0a", "expected a bare codestream"
    container = (
        b"\0\0\0\x0cJXL \r\n\x87\n"
        + box(b"ftyp", b"jxl \0\0\0\0jxl ")
        + box(b"Exif", struct.pack(">I", 0) + tiff_exif(6))
        + box(b"jxlc", codestream)
    )
    assert np.array_equal(imagecodecs.jpegxl_decode(container), rgb8)
    open(os.path.join(OUT, "exif_container.jxl"), "wb").write(container)
    frames = np.stack([pattern(3, 8)[:8, :8] // (k + 1) for k in range(3)])
    open(os.path.join(OUT, "anim.jxl"), "wb").write(imagecodecs.jpegxl_encode(frames))


if __name__ == "__main__":
    main()
