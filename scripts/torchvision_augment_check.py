"""Cross-check datamoat's photo_augment (TrivialAugmentWide, RandAugment, every op at every magnitude
bin in both signs) and adjust_hue against the real torchvision.

torchvision does not import beside this project's pinned torch, so run it in a throwaway venv that
has a matching torch and torchvision (for example torch 2.14.1 with torchvision 0.29.1):
``/tmp/tv/bin/python scripts/torchvision_augment_check.py``. It loads photo_augment.py by path with
`datamoat.configs` stubbed, so nothing else of datamoat is needed there. Prints the mismatches.
"""

import importlib.util
import pathlib
import sys
import types

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import autoaugment as aa
from torchvision.transforms import functional as TF

cfg = types.ModuleType("datamoat.configs")


def check(ok, msg):
    if not ok:
        raise ValueError(msg)


def check_choice(name, v, allowed):
    if v not in allowed:
        raise ValueError(name)


cfg.check, cfg.check_choice = check, check_choice
sys.modules["datamoat"] = types.ModuleType("datamoat")
sys.modules["datamoat.configs"] = cfg
spec = importlib.util.spec_from_file_location(
    "pa", str(pathlib.Path(__file__).resolve().parents[1] / "datamoat/data/photo_augment.py")
)
pa = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pa)

gen = torch.Generator().manual_seed(123)
imgs = [
    torch.randint(0, 256, (c, h, w), dtype=torch.uint8, generator=gen)
    for c, h, w in [(3, 17, 23), (1, 20, 13), (3, 32, 32)]
]
# a smooth image too (random noise hides geometric off-by-ones less, but smooth hides value errors less)
yy, xx = torch.meshgrid(torch.arange(24), torch.arange(31), indexing="ij")
imgs.append(torch.stack([(xx * 8) % 256, (yy * 10) % 256, ((xx + yy) * 4) % 256]).to(torch.uint8))
imgs.append(((xx * 3 + 40) % 256).to(torch.uint8)[None])
mism = {}
nmax = {}
for name, (_op, signed, ta, ra) in pa._OPS.items():
    mags = [0.0]
    for top in (ta, ra):
        if top is None:
            continue
        if name.startswith("Translate") and top < 1:
            top = top * 31
        ms = pa._magnitudes(name, top, 31).tolist()
        mags += ms + ([-m for m in ms] if signed else [])
    for img in imgs:
        for m in mags:
            if name == "Posterize":
                m = int(m)
            if name == "Solarize" and m > 255:
                continue
            ref = aa._apply_op(img, name, float(m), interpolation=InterpolationMode.NEAREST, fill=None)
            got = pa.apply_op(img, name, m)
            d = (ref.int() - got.int()).abs()
            if d.max() > 0:
                mism[name] = mism.get(name, 0) + 1
                nmax[name] = max(nmax.get(name, (0, 0)), (int(d.max()), int((d > 0).sum())))
print("ops compared; mismatching cases per op:", mism, "worst (maxdiff, npixels):", nmax)

# whole policies, same global stream
for img in imgs:
    for s in range(200):
        torch.manual_seed(s)
        ref = aa.TrivialAugmentWide()(img)
        torch.manual_seed(s)
        got = pa.trivial_augment(img, torch.default_generator)
        if not torch.equal(ref, got):
            print("TA differs seed", s, tuple(img.shape), (ref.int() - got.int()).abs().max().item())
        torch.manual_seed(s)
        ref = aa.RandAugment(num_ops=2, magnitude=9)(img)
        torch.manual_seed(s)
        got = pa.rand_augment(img, torch.default_generator, 2, 9)
        if not torch.equal(ref, got):
            print("RA differs seed", s, tuple(img.shape), (ref.int() - got.int()).abs().max().item())
print("policies compared")

# hue
src = (pathlib.Path(__file__).resolve().parents[1] / "datamoat/data/photo_transforms.py").read_text()
start = src.index("def _shift_hue")
end = src.index("def adjust_hue")
ns = {"torch": torch}
exec(src[start:end], ns)
for img in imgs:
    if img.shape[0] != 3:
        continue
    for f in (-0.5, -0.3, -0.1, 0.0, 0.05, 0.25, 0.5):
        ref = TF.adjust_hue(img, f).int()
        mine = (ns["_shift_hue"](img.float() / 255, f) * 255.999).to(torch.uint8).int()
        print("hue", f, "max diff", (ref - mine).abs().max().item())
src2 = src[src.index("def _shift_hue") : src.index("def color_jitter")]
ns2 = {"torch": torch, "check": check}
exec(src2, ns2)
worst = 0
for s in range(30):
    g2 = torch.Generator().manual_seed(s)
    img = torch.randint(0, 256, (3, 37, 29), dtype=torch.uint8, generator=g2)
    f = float(torch.empty(1).uniform_(-0.5, 0.5, generator=g2))
    worst = max(worst, (TF.adjust_hue(img, f).int() - ns2["adjust_hue"](img, f).int()).abs().max().item())
print("adjust_hue worst diff over 30 random images/factors:", worst)
cnt = 0
tot = 0
for s in range(30):
    g2 = torch.Generator().manual_seed(s)
    img = torch.randint(0, 256, (3, 37, 29), dtype=torch.uint8, generator=g2)
    f = float(torch.empty(1).uniform_(-0.5, 0.5, generator=g2))
    d = (TF.adjust_hue(img, f).int() - ns2["adjust_hue"](img, f).int()).abs()
    cnt += int((d > 0).sum())
    tot += d.numel()
print("pixels differing:", cnt, "of", tot)
