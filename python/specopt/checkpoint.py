"""Read a checkpoint of the C++ trainer (``specopt train``'s RUN_DIR/checkpoint.pt) in Python.

``torch.load`` cannot read such a file: it is a 24-byte header (include/specopt/train/checkpoint.h:
magic ``SPECCKPT``, format version, payload length, CRC-32 of the payload; little-endian)
in front of a LibTorch ``torch::serialize::OutputArchive``. That archive is a TorchScript
module archive, which ``torch.jit.load`` reads: its tensors are the module's parameters and
buffers, its other values attributes, its nested archives submodules. :func:`load_checkpoint`
checks the header as the C++ reader does, then turns the archive into plain Python objects.

For a file that any torch.load-based code reads, see ``specopt export`` (docs/training.md).
"""
import io
import struct
import zlib
from collections import OrderedDict

import torch

__all__ = ["load_checkpoint"]

# include/specopt/train/checkpoint.h: kCheckpointMagic, kCheckpointFormatVersion, kCheckpointHeaderSize.
_MAGIC = b"SPECCKPT"
_FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIQI")  # magic, version (uint32), payload length (uint64), CRC-32 (uint32)
# Attributes every TorchScript module has; not part of what the trainer wrote.
_MODULE_ATTRIBUTES = {"training", "_is_full_backward_hook"}


def _payload(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _HEADER.size:
        raise ValueError(f"checkpoint '{path}' is truncated: {len(data)} bytes, shorter than the "
                         f"{_HEADER.size}-byte header")
    magic, version, length, crc = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError(f"'{path}' is not a specopt checkpoint (bad magic bytes)")
    if version != _FORMAT_VERSION:
        raise ValueError(f"checkpoint '{path}' has format version {version}; this specopt reads "
                         f"version {_FORMAT_VERSION}")
    payload = memoryview(data)[_HEADER.size:]
    if len(payload) != length:
        what = "truncated" if len(payload) < length else "followed by extra bytes"
        raise ValueError(f"checkpoint '{path}' is {what}: the header announces {length} payload "
                         f"bytes, the file holds {len(payload)}")
    if zlib.crc32(payload) != crc:
        raise ValueError(f"checkpoint '{path}' is corrupt: CRC-32 of the payload does not match the header")
    return bytes(payload)


def _attributes(module):
    """The values (tensors included) the C++ archive wrote into this module, by key."""
    kinds = torch._C.ConcreteModuleType.from_jit_type(module._c._type()).get_attributes()
    return {name: module._c.getattr(name) for name in kinds if name not in _MODULE_ATTRIBUTES}


def _child(module, name):
    children = dict(module.named_children())
    if name not in children:
        raise ValueError(f"the archive lacks '{name}'")
    return children[name]


def _archive_dict(module):
    """A nested archive as a dict: values and tensors, and a dict per nested archive."""
    out = _attributes(module)
    for name, child in module.named_children():
        out[name] = _archive_dict(child)
    return out


def _optimizer(archive):
    """The CompositeOptimizer archive (core/make_optimizer.h: the composite, then per underlying
    optimizer spectral_optimizers.cpp's SpectralOptimizerBase::save) keyed by parameter name."""
    top = _attributes(archive)
    if top.get("kind") != "SpectralOptimizer":
        raise ValueError(f"the optimizer archive is of kind {top.get('kind')!r}, not SpectralOptimizer")
    names = [top[f"name.{i}"] for i in range(top["names.size"])]
    groups, state, k = [], OrderedDict(), 0  # names run over optimizers, groups, parameters in order
    for o in range(top["optimizers"]):
        opt = _child(archive, f"optimizer.{o}")
        head = _attributes(opt)
        for g in range(head["groups"]):
            group = _child(opt, f"group.{g}")
            values = _attributes(group)
            params = []
            for i in range(values["size"]):
                if k >= len(names):
                    raise ValueError("the optimizer archive holds more parameters than names")
                name = names[k]
                k += 1
                params.append(name)
                if values[f"param.{i}.has_state"]:
                    state[name] = _archive_dict(_child(group, f"param.{i}.state"))
            groups.append(dict(_archive_dict(_child(group, "options")), optimizer=head["kind"],
                               params=params))
    if k != len(names):
        raise ValueError(f"the optimizer archive names {len(names)} parameters but its groups hold {k}")
    return {"family": top["family"], "param_groups": groups, "state": state}


def load_checkpoint(path, map_location="cpu"):
    """The contents of a C++ trainer checkpoint, as plain Python objects.

    Returns a dict:
      * ``"model"``: the model's state_dict (an OrderedDict name -> tensor, the C++ module
        names, e.g. ``transformer.h.0.attn.c_attn.weight``);
      * ``"optimizer"``: ``{"family", "param_groups", "state"}``: each param group's options
        (``lr``, ``p``, ``method``, ... as the C++ options name them), its ``optimizer``
        ("SpectralAdamW" / "SpectralSGD") and ``params`` (parameter names); ``state`` maps a
        parameter name to its state (``step``, ``exp_avg``, ``exp_avg_sq``; or
        ``momentum_buffer``);
      * ``"step"``: optimizer steps done;
      * ``"config"``: the resolved train config as a dict (tomllib, Python >= 3.11; else
        None) and ``"config_toml"``: its TOML text;
      * ``"extra"``: the rest of the trainer state (random generator and data sampler
        state, running totals), by the archive's keys.

    Raises ValueError naming the file if it is not a specopt checkpoint, has another format
    version, is truncated or corrupt (the C++ reader's checks), or lacks an entry.
    """
    payload = _payload(path)
    try:
        root = torch.jit.load(io.BytesIO(payload), map_location=map_location)
        values = _attributes(root)
        model = OrderedDict(_child(root, "model").state_dict())
        optimizer = _optimizer(_child(root, "optimizer"))
        config_toml, step = values.pop("config"), values.pop("step")
    except (RuntimeError, KeyError, ValueError) as e:
        raise ValueError(f"checkpoint '{path}': unreadable archive: {e}") from None
    try:
        import tomllib
        config = tomllib.loads(config_toml)
    except ImportError:
        config = None
    return {"model": model, "optimizer": optimizer, "step": step, "config": config,
            "config_toml": config_toml, "extra": values}
