#!/usr/bin/env python3
"""Writes PyTorch-format (zip + pickle) checkpoint fixtures without needing PyTorch.

The pickles use the same opcodes torch.save emits: tensors are rebuilt by
`torch._utils._rebuild_tensor_v2` from storages referenced by persistent ids. Stand-in
`torch` modules are registered only so the standard pickler can name those globals.

Outputs (tests/fixtures/pickles/):
  tiny_state_dict.pt  plain state dict of the tiny reference model
  tiny_deepspeed.pt   the same under {'module': ..., 'global_steps': 7} as DeepSpeed saves
  malicious.pt        a pickle that would call os.system when unpickled by Python
"""
import collections, io, json, os, pickle, struct, sys, types, zipfile

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        a, b = info["data_offsets"]
        out[name] = (info["shape"], data[a:b])
    return out


torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")
sys.modules["torch"], sys.modules["torch._utils"] = torch, utils


def _rebuild_tensor_v2(*args):
    raise RuntimeError("stand-in")


_rebuild_tensor_v2.__module__ = "torch._utils"
utils._rebuild_tensor_v2 = _rebuild_tensor_v2


class FloatStorage:
    pass


FloatStorage.__module__ = "torch"
torch.FloatStorage = FloatStorage


class Storage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        stride, acc = [], 1
        for d in reversed(self.shape):
            stride.insert(0, acc)
            acc *= d
        return (_rebuild_tensor_v2, (self.storage, 0, tuple(self.shape), tuple(stride), False, collections.OrderedDict()))


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
        return None


def save(path, make_root, tensors):
    storages, blobs = {}, {}
    for i, (name, (shape, raw)) in enumerate(sorted(tensors.items())):
        st = Storage(str(i), len(raw) // 4)
        storages[name] = Tensor(st, shape)
        blobs[str(i)] = raw
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(make_root(collections.OrderedDict(storages)))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        for k, raw in blobs.items():
            z.writestr(f"archive/data/{k}", raw)
        z.writestr("archive/version", "3\n")


class Evil:
    def __reduce__(self):
        return (os.system, ("touch infdit-pwned-marker",))


def main():
    out = os.path.join(ROOT, "pickles")
    os.makedirs(out, exist_ok=True)
    tensors = read_safetensors(os.path.join(ROOT, "tiny", "weights.safetensors"))
    save(os.path.join(out, "tiny_state_dict.pt"), lambda sd: sd, tensors)
    save(os.path.join(out, "tiny_deepspeed.pt"), lambda sd: {"module": sd, "global_steps": 7}, tensors)
    with zipfile.ZipFile(os.path.join(out, "malicious.pt"), "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"weight": Evil()}, protocol=2))
        z.writestr("archive/version", "3\n")


if __name__ == "__main__":
    main()
