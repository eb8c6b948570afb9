"""`load_weights`: a torchvision-format checkpoint into a network, checked first, never unpickling code.

A checkpoint is a state_dict saved with ``torch.save`` (``.pth``/``.pt``/``.bin``),
bare or wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``, with or
without DataParallel's ``module.`` prefix, or a ``.safetensors`` file. Nothing
is copied into the network unless every key and shape fits, so a refused
checkpoint leaves it as it was, and no file over `MAX_CHECKPOINT_BYTES` is read.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from datamoat.errors import BadInput, NotFound, TooLarge

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "load_weights",
    "read_state_dict",
]

WRAPPERS = ("state_dict", "model")  # training scripts' usual envelopes around the state_dict
SHOW = 5  # names listed per kind of problem before "... and N more"
# resnet50's ImageNet weights, the zoo's largest, are about 100 MB: 20 times that is a wrong file, not a backbone
MAX_CHECKPOINT_BYTES = 2 * 1024**3


def _listing(kind: str, items: list[str]) -> str:
    more = f", ... and {len(items) - SHOW} more" if len(items) > SHOW else ""
    return f"{len(items)} {kind}: {', '.join(items[:SHOW])}{more}"


def _size_within(path: Path, max_bytes: int, name: str | None = None) -> int:
    size = path.stat().st_size
    if size > max_bytes:
        raise TooLarge(
            f"{name or path} is {size:,} bytes, over the {max_bytes:,}-byte cap for a checkpoint "
            "(no zoo backbone comes near it): check that it is the right file"
        )
    return size


def read_state_dict(
    path: str | Path, *, strip_module: bool = True, max_bytes: int = MAX_CHECKPOINT_BYTES
) -> dict[str, torch.Tensor]:
    """The tensors in checkpoint `path`, unwrapped; with `strip_module`, a ``module.`` prefix on every key removed.

    A ``.safetensors`` file is read with safetensors, anything else with
    ``torch.load(weights_only=True)``: a file that holds pickled objects other
    than tensors and plain containers is refused with `BadInput`, and so is a
    file over `max_bytes`, before it is read.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "w.pth"
    >>> torch.save({"model": {"module.fc.bias": torch.zeros(2)}}, path)
    >>> read_state_dict(path)
    {'fc.bias': tensor([0., 0.])}
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"no checkpoint at {path}: give the path of a .pth, .pt or .safetensors file")
    _size_within(path, max_bytes)
    if path.suffix == ".safetensors":
        try:
            state: Any = load_file(str(path), device="cpu")
        except Exception as e:
            raise BadInput(f"{path} is not a readable safetensors file ({type(e).__name__}): re-save it") from e
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            # torch raises UnpicklingError both for a refused object and for bytes that are no pickle at all
            text = str(e)
            if isinstance(e, pickle.UnpicklingError) and "Weights only" in text and "Unsupported operand" not in text:
                raise BadInput(
                    f"{path} holds pickled objects other than tensors, which are never unpickled here "
                    "(weights_only): save just the weights, torch.save(model.state_dict(), path)"
                ) from e
            raise BadInput(
                f"{path} is not a PyTorch checkpoint ({type(e).__name__}): give a file written by torch.save"
            ) from e
    for _ in range(2):  # e.g. {"model": {"state_dict": {...}}}
        if isinstance(state, Mapping):
            inner = next((state[w] for w in WRAPPERS if isinstance(state.get(w), Mapping)), None)
            state = inner if inner is not None else state
    if not isinstance(state, Mapping) or not state:
        raise BadInput(f"{path} holds no state_dict (a {type(state).__name__}): save model.state_dict()")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise BadInput(f"{path}: {_listing('entries are not named tensors', bad)}: save model.state_dict()")
    if strip_module and all(
        k.startswith("module.") for k in state
    ):  # saved from nn.DataParallel / DistributedDataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def load_weights(net: nn.Module, path: str | Path, *, head: str | None = None) -> dict[str, Any]:
    """Load checkpoint `path` into `net` after checking every key and shape; returns what was done.

    With `head` (a state_dict prefix such as ``"fc"``; see
    `datamoat.models.backbones.head_name`), keys under it that are missing,
    unexpected or of another shape are skipped, not errors: fine-tuning an
    ImageNet checkpoint to other classes. Any other mismatch raises `BadInput`
    with one line naming every missing key, unexpected key and shape mismatch.

    >>> import tempfile
    >>> from datamoat.models.backbones import build_backbone, replace_head
    >>> path = Path(tempfile.mkdtemp()) / "resnet18.pth"
    >>> torch.save(build_backbone("resnet18").state_dict(), path)
    >>> net = replace_head(build_backbone("resnet18"), "resnet18", 3)
    >>> load_weights(net, path, head="fc")
    {'loaded': 120, 'skipped_head': ['fc.bias', 'fc.weight']}
    """
    want = net.state_dict()
    # keep the prefix only for a network that is itself wrapped in DataParallel
    state = read_state_dict(path, strip_module=not all(k.startswith("module.") for k in want))
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    mismatched = [k for k in want if k in state and state[k].shape != want[k].shape]
    skipped = sorted(k for k in missing + unexpected + mismatched if head is not None and _under(k, head))
    missing, unexpected, mismatched = ([k for k in ks if k not in skipped] for ks in (missing, unexpected, mismatched))
    if missing or unexpected or mismatched:
        problems = [_listing("missing keys", missing)] if missing else []
        problems += [_listing("unexpected keys", unexpected)] if unexpected else []
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(want[k].shape)}" for k in mismatched]
        problems += [_listing("shape mismatches (checkpoint vs model)", shapes)] if shapes else []
        fix = _fix(net, head, missing + unexpected + mismatched)
        raise BadInput(f"{path} does not fit the {type(net).__name__}: {'; '.join(problems)}: {fix}")
    keep = {k: v for k, v in state.items() if k not in skipped}
    net.load_state_dict(keep, strict=not skipped)
    return {"loaded": len(keep), "skipped_head": skipped}


def _fix(net: nn.Module, head: str | None, keys: list[str]) -> str:
    """How to fix a mismatch: name the classifier prefix when only the classifier disagrees."""
    last = next((n for n, m in reversed(list(net.named_modules())) if isinstance(m, nn.Linear)), None)
    if head is None and last and all(_under(k, last) for k in keys):
        return f"only the classifier differs: pass head={last!r} to fine-tune to this model's classes"
    return (
        "build the backbone the checkpoint was saved from (same name, num_classes and in_channels), "
        "or pass head=<classifier prefix> to skip only the classifier"
    )
