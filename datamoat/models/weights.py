"""`load_weights`: a torchvision-format checkpoint into a network, checked first, never unpickling code.

A checkpoint is a state_dict saved with ``torch.save`` (``.pth``/``.pt``/``.bin``),
bare or wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``, with or
without DataParallel's ``module.`` prefix, or a ``.safetensors`` file. Nothing
is copied into the network unless every key and shape fits, so a refused
checkpoint leaves it as it was, and no file over `MAX_CHECKPOINT_BYTES` is read.

`resolve_checkpoint` turns what the user names, a path or
``hub:OWNER/REPO[@REVISION][:FILE]``, into a local file and the sha256 of its
bytes. A hub file goes through ``huggingface_hub.hf_hub_download`` into the
user's Hugging Face cache, but only after the hub said its size (refused over
the cap before a byte is fetched, and cut off if the body runs past it) and an
id the bytes can be checked against: the sha256 of an LFS file, the git blob
sha1 of any other. Bytes that do not match that id are refused, so a mirror, a
proxy or an altered cache cannot hand over another file under the same name.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from datamoat.errors import BadInput, DatamoatError, NotFound, TooLarge

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "Checkpoint",
    "HubRef",
    "load_weights",
    "parse_hub_ref",
    "read_state_dict",
    "resolve_checkpoint",
]

WRAPPERS = ("state_dict", "model")  # training scripts' usual envelopes around the state_dict
SHOW = 5  # names listed per kind of problem before "... and N more"
# resnet50's ImageNet weights, the zoo's largest, are about 100 MB: 20 times that is a wrong file, not a backbone
MAX_CHECKPOINT_BYTES = 2 * 1024**3
SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")  # .bin: the hub's name for a torch.save file
HUB = "hub:"
HUB_FILE = "model.safetensors"  # what the hub's libraries write by default
HUB_REVISION = "main"
# spelled out, no brackets: the CLI prints errors through rich, which reads "[@...]" as markup
HUB_USAGE = (
    "write hub:OWNER/REPO, hub:OWNER/REPO:FILE or hub:OWNER/REPO@REVISION:FILE "
    "(FILE defaults to model.safetensors, REVISION to main)"
)
_REPO = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
_REVISION = re.compile(r"[\w.-]+(/[\w.-]+)*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")  # also a commit id
BLOCK = 1 << 20


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


def load_weights(
    net: nn.Module, path: str | Path, *, head: str | None = None, keep_head: bool = True
) -> dict[str, Any]:
    """Load checkpoint `path` into `net` after checking every key and shape; returns what was done.

    With `head` (a state_dict prefix such as ``"fc"``; see
    `datamoat.models.backbones.head_name`), keys under it that are missing,
    unexpected or of another shape are skipped, not errors: fine-tuning an
    ImageNet checkpoint to other classes; with ``keep_head=False`` the head is
    skipped even where it fits (the same number of classes, but other ones),
    so it starts freshly initialised. Any other mismatch raises `BadInput`
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
    differ = missing + unexpected + mismatched
    skipped = sorted({k for k in (differ if keep_head else [*differ, *state]) if head is not None and _under(k, head)})
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


@dataclass(frozen=True)
class HubRef:
    """A file in a Hugging Face hub repo: what ``hub:OWNER/REPO[@REVISION][:FILE]`` names."""

    repo: str
    file: str = HUB_FILE
    revision: str = HUB_REVISION

    def __str__(self) -> str:
        return f"{HUB}{self.repo}@{self.revision}:{self.file}"


def parse_hub_ref(ref: str) -> HubRef:
    """Split ``hub:OWNER/REPO[@REVISION][:FILE]``; FILE defaults to ``model.safetensors``, REVISION to ``main``.

    >>> parse_hub_ref("hub:timm/resnet18.a1_in1k")
    HubRef(repo='timm/resnet18.a1_in1k', file='model.safetensors', revision='main')
    >>> str(parse_hub_ref("hub:me/nets@v2:weights/resnet18.pth"))
    'hub:me/nets@v2:weights/resnet18.pth'
    """
    where, _, file = ref.removeprefix(HUB).partition(":")  # a git ref never holds ":", so the first one ends it
    repo, _, revision = where.partition("@")
    file, revision = file or HUB_FILE, revision or HUB_REVISION
    if not ref.startswith(HUB) or not _REPO.fullmatch(repo) or ".." in repo or "--" in repo:
        raise BadInput(f"{ref!r} names no hub repo: {HUB_USAGE}")
    if not _REVISION.fullmatch(revision) or ".." in revision:
        raise BadInput(f"{ref!r}: {revision!r} is not a branch, tag or commit: {HUB_USAGE}")
    if file.startswith("/") or any(part in ("", ".", "..") for part in file.split("/")):
        raise BadInput(f"{ref!r}: {file!r} is not a path inside the repo: {HUB_USAGE}")
    if not file.endswith(SUFFIXES):
        raise BadInput(f"{ref!r}: {file!r} is not a checkpoint: name a {', '.join(SUFFIXES)} file; {HUB_USAGE}")
    return HubRef(repo, file, revision)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint on local disk; `hub` says where it came from when it was fetched (repo, file, revision, commit)."""

    path: Path
    sha256: str  # of the bytes, computed here
    size: int
    hub: dict[str, str] | None = None


def resolve_checkpoint(ref: str | Path, *, max_bytes: int = MAX_CHECKPOINT_BYTES) -> Checkpoint:
    """The local file `ref` names, a path or ``hub:OWNER/REPO[@REVISION][:FILE]``, with the sha256 of its bytes.

    A hub file is fetched into the Hugging Face cache (``HF_HOME``, ``HF_ENDPOINT``
    and a logged-in token apply as for any huggingface_hub download), or taken
    from it when the hub cannot be reached. Nothing over `max_bytes` is fetched
    or read.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "w.pth"
    >>> path.write_bytes(b"abc")
    3
    >>> resolve_checkpoint(path).sha256[:12]
    'ba7816bf8f01'
    """
    if isinstance(ref, str) and ref.startswith(HUB):
        hub = parse_hub_ref(ref)
        path, claimed = _fetch(hub, max_bytes)
        size = _size_within(path, max_bytes, str(hub))
        sha256, git_sha1 = _digests(path, size)
        if claimed is not None and claimed not in (sha256, git_sha1):
            raise BadInput(
                f"{hub}: the bytes in {path} do not match the id the hub gave them ({claimed} vs sha256 {sha256}): "
                f"the file was altered on the way or in the cache: delete {path.resolve()} and {path} and retry, "
                "or download the file yourself and pass its path"
            )
        commit = path.parents[hub.file.count("/")].name  # <cache>/snapshots/<commit>/<file>
        info = {"ref": f"{HUB}{hub.repo}@{commit}:{hub.file}", "repo": hub.repo, "file": hub.file}
        return Checkpoint(path, sha256, size, {**info, "revision": hub.revision, "commit": commit})
    path = Path(ref)
    if not path.is_file():
        raise NotFound(f"no checkpoint at {path}: give the path of a .pth, .pt or .safetensors file, or {HUB_USAGE}")
    size = _size_within(path, max_bytes)
    return Checkpoint(path, _digests(path, size)[0], size)


def _digests(path: Path, size: int) -> tuple[str, str]:
    """(sha256, git blob sha1) of the file's bytes: the hub names an LFS file by the first, any other by the second."""
    sha256, git_sha1 = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            sha256.update(block)
            git_sha1.update(block)
    return sha256.hexdigest(), git_sha1.hexdigest()


def _fetch(hub: HubRef, max_bytes: int) -> tuple[Path, str | None]:
    """The cached copy of `hub`'s file, fetched if needed, and the id the hub gave its bytes (None: from the cache, offline).

    One HEAD without retries first: it says the size and the id before any
    download, and tells at once when the hub cannot be reached, where
    hf_hub_download would retry for half a minute.
    """
    import httpx2
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import (
        FileMetadataError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # read now: the library reads HF_ENDPOINT once, on import
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    fix = f"or download {hub.file} from {hub.repo} yourself and pass its path to --weights"
    try:
        meta = get_hf_file_metadata(
            hf_hub_url(hub.repo, hub.file, revision=hub.revision, endpoint=endpoint), endpoint=endpoint
        )
    except RevisionNotFoundError as e:
        raise NotFound(f"{hub}: {endpoint} has no revision {hub.revision!r} in {hub.repo}: check it, {fix}") from e
    except RemoteEntryNotFoundError as e:
        raise NotFound(f"{hub}: {endpoint} has no file {hub.file!r} in {hub.repo}: check the name, {fix}") from e
    except (HfHubHTTPError, FileMetadataError, OfflineModeIsEnabled, httpx2.HTTPError) as e:
        try:  # offline, refused or failing: a copy fetched before still serves, as hf_hub_download would use it
            cached = Path(
                hf_hub_download(hub.repo, hub.file, revision=hub.revision, endpoint=endpoint, local_files_only=True)
            )
        except (OSError, ValueError):
            if isinstance(e, RepositoryNotFoundError):
                raise NotFound(
                    f"{hub}: {endpoint} has no repo {hub.repo} (or it is private or gated and no token was given): "
                    f"check the name, log in with `hf auth login`, {fix}"
                ) from e
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BadInput(
                f"{hub}: cannot fetch {hub.file} from {endpoint} ({why}) and it is not in the cache: {fix}"
            ) from e
        blob = cached.resolve().name  # the cache names a blob by the id it had when fetched (and checked)
        return cached, blob if _SHA256.fullmatch(blob) or _GIT_SHA1.fullmatch(blob) else None
    # The hub's own answers always carry these; without them there is nothing to check the bytes against.
    if not (meta.commit_hash and _GIT_SHA1.fullmatch(meta.commit_hash)):
        raise BadInput(
            f"{hub}: {endpoint} answered without a commit id (X-Repo-Commit): is it a Hugging Face hub? {fix}"
        )
    if not (meta.etag and (_SHA256.fullmatch(meta.etag) or _GIT_SHA1.fullmatch(meta.etag))):
        raise BadInput(f"{hub}: {endpoint} gave no sha256 or git id for {hub.file} to check it by: {fix}")
    if meta.size is None:
        raise BadInput(f"{hub}: {endpoint} did not say the size of {hub.file}: {fix}")
    if meta.size > max_bytes:
        raise TooLarge(
            f"{hub} is {meta.size:,} bytes, over the {max_bytes:,}-byte cap for a checkpoint "
            f"(no zoo backbone comes near it): check that it is the right file"
        )
    try:
        path = hf_hub_download(
            hub.repo,
            hub.file,
            revision=hub.revision,
            endpoint=endpoint,
            tqdm_class=_capped_progress(max_bytes, str(hub)),
        )
    except DatamoatError:
        raise
    except (HfHubHTTPError, httpx2.HTTPError, OSError, ValueError) as e:  # OSError: the size check on what arrived
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadInput(f"{hub}: the download from {endpoint} failed ({why}): retry, {fix}") from e
    return Path(path), meta.etag


def _capped_progress(max_bytes: int, name: str) -> type:
    """huggingface_hub's progress bar, raising `TooLarge` once more than `max_bytes` arrived.

    The bar sees every chunk as it is written: the only hook where a body that
    runs past the size the hub announced can be cut off rather than read whole.
    """
    from huggingface_hub.utils import tqdm

    class Capped(tqdm):
        seen = 0

        def update(self, n: float | None = 1) -> bool | None:
            self.seen += int(n or 0)
            if self.seen > max_bytes:
                raise TooLarge(f"{name}: the download ran past the {max_bytes:,}-byte cap for a checkpoint: refused")
            return super().update(n)

    return Capped
