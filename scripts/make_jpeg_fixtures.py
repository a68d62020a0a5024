#!/usr/bin/env python3
"""Writes the JPEG decoding fixtures: sampling layouts that the image crate's decoder
(zune-jpeg) garbles or refuses, so that jpeg-decoder reads them.

Needs `pip install numpy pillow` and libjpeg-turbo's cjpeg and djpeg on the PATH. Each
JPEG comes with the PNG that djpeg decodes it to, so the tests compare our decoding with
libjpeg's, not with the encoder's input.

Outputs (tests/fixtures/formats/):
  sampling_1x1_2x2_1x1.jpg, ….png              baseline, luma sampled 1×1 and Cb 2×2
                                               (cjpeg -sample 1x1,2x2,1x1)
  sampling_1x1_1x1_2x2_progressive.jpg, ….png  progressive, Cr sampled 2×2
  sampling_1x1_3x1_1x1.jpg, ….png              baseline, Cb sampled 3×1
"""
import os, subprocess, tempfile

import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "formats")
H, W = 17, 23


def pattern():
    y, x = np.mgrid[0:H, 0:W]
    planes = [x * 255 // (W - 1), y * 255 // (H - 1), ((x * 7 + y * 13) % 29) * 255 // 28]
    return np.stack(planes, axis=-1).astype(np.uint8)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src.ppm")
        Image.fromarray(pattern()).save(src)
        for sample, extra, name in [
            ("1x1,2x2,1x1", [], "sampling_1x1_2x2_1x1"),
            ("1x1,1x1,2x2", ["-progressive"], "sampling_1x1_1x1_2x2_progressive"),
            ("1x1,3x1,1x1", [], "sampling_1x1_3x1_1x1"),
        ]:
            jpg = os.path.join(OUT, name + ".jpg")
            subprocess.run(
                ["cjpeg", "-quality", "95", "-sample", sample, *extra, "-outfile", jpg, src],
                check=True,
            )
            ppm = os.path.join(tmp, name + ".ppm")
            subprocess.run(["djpeg", "-outfile", ppm, jpg], check=True)
            Image.open(ppm).save(os.path.join(OUT, name + ".png"))


if __name__ == "__main__":
    main()
