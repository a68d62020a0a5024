#!/usr/bin/env python3
"""Writes small checkpoint fixtures with torch.save itself, for layouts that only the real
writer produces. Needs PyTorch; run from anywhere.

Outputs (tests/fixtures/pickles/):
  model_weights_epoch_1.pt  two tensors, saved under a 21-character name (the archive's
                            folder prefix), whose zip64 end records misled zip offset detection
  strided_views.pt          views saved without .contiguous(): row and column slices, a
                            transpose, an offset row, a broadcast (stride 0) expand
  int_and_bool.pt           a float tensor beside int32 and bool ones
  protocol4.pt              a state dict saved with pickle_protocol=4
"""
import os

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "pickles")


def save(obj, name, **kw):
    # torch names the archive's folder after the file it is saved as, so save in place.
    cwd = os.getcwd()
    os.chdir(OUT)
    try:
        torch.save(obj, name, **kw)
    finally:
        os.chdir(cwd)


base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
save({"a": base, "b": torch.linspace(-1, 1, 5)}, "model_weights_epoch_1.pt")
save(
    {
        "rows": base[::2],
        "cols": base[:, 1:3],
        "transposed": base.t(),
        "row": base[1],
        "expanded": torch.tensor([1.0, 2.0, 3.0]).expand(2, 3),
    },
    "strided_views.pt",
)
save(
    {
        "weight": base,
        "count": torch.tensor([1, 2, 3], dtype=torch.int32),
        "mask": torch.tensor([True, False]),
    },
    "int_and_bool.pt",
)
save({"a": base}, "protocol4.pt", pickle_protocol=4)
