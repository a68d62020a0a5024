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
  protocol5_deepspeed.pt    a DeepSpeed-shaped dict (bf16, a view, a set, a numpy scalar)
                            saved with pickle_protocol=5
  forged_storage_size.pt    a tensor whose pickle claims a 2^31-element storage
  forged_view_size.pt       a tensor whose pickle claims a 2^40-element zero-stride view
  big_endian.pt             f32, f16 and f64 tensors as a big-endian machine saves them
  nested_state_dict.pt      a state dict under model_state_dict, beside an optimizer state
                            and an EMA copy in a list
  legacy_protocol4.pt       the pre-1.6 (not zip) format, pickle protocol 4
  float8.pt                 a float8_e4m3fn tensor beside a float32 one
"""
import argparse
import collections
import os

import numpy
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


def rewrite(name, edit):
    """Rewrites every member of the saved archive `name` with edit(member name, bytes)."""
    import zipfile

    path = os.path.join(OUT, name)
    with zipfile.ZipFile(path) as z:
        entries = [(i, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for info, data in entries:
            z.writestr(info, edit(info.filename, data))


def forge(name, edits):
    """A copy of a saved 7-element tensor whose pickle claims other sizes (what a damaged
    or hostile file may claim): `edits` replaces byte strings of the pickle."""

    def edit(member, data):
        if member.endswith("data.pkl"):
            for old, new in edits:
                assert data.count(old) == 1, old
                data = data.replace(old, new)
        return data

    save({"w": torch.arange(7, dtype=torch.float32)}, name)
    rewrite(name, edit)


# The storage claims 2^31-1 elements and the view a stride of 2 (so it is read whole).
forge("forged_storage_size.pt", [(b"K\x07t", b"J\xff\xff\xff\x7ft"), (b"K\x01\x85", b"K\x02\x85")])
# The view claims 2^40 elements over the 7 (zero strides).
forge(
    "forged_view_size.pt",
    [(b"K\x07\x85q\x08K\x01\x85", b"J\x00\x00\x10\x00J\x00\x00\x10\x00\x86q\x08K\x00K\x00\x86")],
)


# What a DeepSpeed-style checkpoint saved with the newest pickle protocol holds: frames,
# memoised strings and globals, a set, a frozenset and bytes (a numpy scalar's payload)
# beside the tensors.
module = collections.OrderedDict(
    [("w", base.to(torch.bfloat16)), ("rows", base[::2]), ("b", torch.linspace(-1, 1, 5))]
)
save(
    {
        "module": module,
        "param_shapes": [collections.OrderedDict((k, v.shape) for k, v in module.items())],
        "sparse_tensor_module_names": {"emb", "head"},
        "frozen": frozenset({1}),
        "np_scalar": numpy.float32(0.5),
        "args": argparse.Namespace(lr=1e-4, name="run"),
        "global_steps": 7,
    },
    "protocol5_deepspeed.pt",
    pickle_protocol=5,
)


# As a big-endian machine saves it: the byte order record says so and every storage holds
# its values most significant byte first (torch assigns the storages 0, 1, 2 in order).
big = {"a": base, "h": base[0].half(), "d": base[1].double()}
save(big, "big_endian.pt")
sizes = {"0": 4, "1": 2, "2": 8}


def swap(member, data):
    if member.endswith("/byteorder"):
        return b"big"
    key = member.rsplit("/", 1)[-1]
    if "/data/" in member and key in sizes:
        n = sizes[key]
        return b"".join(data[i : i + n][::-1] for i in range(0, len(data), n))
    return data


rewrite("big_endian.pt", swap)
loaded = torch.load(os.path.join(OUT, "big_endian.pt"))
assert all(torch.equal(loaded[k], v) for k, v in big.items())

# A training script's checkpoint: the state dict under a key of its own, beside an
# optimizer state (tensors under integer keys) and an EMA copy in a list.
save(
    {
        "epoch": 3,
        "model_state_dict": {"a": base, "b": torch.linspace(-1, 1, 5)},
        "optimizer_state_dict": {
            "state": {0: {"exp_avg": base}},
            "param_groups": [{"lr": 0.1, "params": [0]}],
        },
        "ema": [{"a": base}],
    },
    "nested_state_dict.pt",
)

# The pre-1.6 format, with a newer pickle protocol (its magic number is then framed).
save({"a": base}, "legacy_protocol4.pt", _use_new_zipfile_serialization=False, pickle_protocol=4)

# A float8 tensor, which torch saves with _rebuild_tensor_v3 and an untyped storage.
save({"a": base, "f8": base.to(torch.float8_e4m3fn)}, "float8.pt")
