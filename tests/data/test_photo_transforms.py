"""Photo transforms on tensors: sizes, aspect, content placement, randomness under a seed,
EXIF orientation, and the evaluation path serving will share."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from datamoat.configs import config_from_dict
from datamoat.data.photo_transforms import (
    PhotoTransformConfig,
    adjust_hue,
    center_crop,
    color_jitter,
    decode,
    eval_transform,
    letterbox,
    random_resized_crop,
    resize_shorter,
    train_transform,
)
from datamoat.errors import BadInput


def _jpeg(w: int, h: int, orientation: int | None = None) -> bytes:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)  # red left half, blue right half
    arr[:, w // 2 :] = (0, 0, 255)
    im = Image.fromarray(arr)
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    im.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_decode_applies_the_exif_orientation_and_makes_rgb():
    plain = decode(_jpeg(40, 20))
    assert tuple(plain.shape) == (3, 20, 40) and plain.dtype == torch.uint8
    turned = decode(_jpeg(40, 20, orientation=6))  # stored landscape, shown rotated 90 degrees
    assert tuple(turned.shape) == (3, 40, 20)
    assert turned[0, :5].float().mean() > 200  # red (the stored left half) is now on top
    gray = io.BytesIO()
    Image.new("I;16", (6, 4), 65535).save(gray, "PNG")
    assert tuple(decode(gray.getvalue()).shape) == (3, 4, 6) and int(decode(gray.getvalue()).min()) == 255
    with pytest.raises(BadInput, match="not a decodable image"):
        decode(b"not an image")


def test_resize_keeps_the_aspect_and_crops_and_letterboxes_place_the_content():
    img = decode(_jpeg(300, 150))
    small = resize_shorter(img, 64)
    assert tuple(small.shape) == (3, 64, 128)
    crop = center_crop(small, (64, 64))
    assert tuple(crop.shape) == (3, 64, 64)
    assert crop[0, :, :20].float().mean() > 200 and crop[2, :, -20:].float().mean() > 200  # red left, blue right
    box = letterbox(img, (64, 64))
    assert tuple(box.shape) == (3, 64, 64)
    assert int(box[:, :14].max()) == 0 and int(box[:, -14:].max()) == 0  # padded above and below
    assert box[0, 32, :16].float().mean() > 200  # the whole width is there


def test_random_crops_follow_the_seed_and_the_size():
    img = decode(_jpeg(320, 200))
    a = random_resized_crop(img, (48, 48), (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(1))
    b = random_resized_crop(img, (48, 48), (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(1))
    c = random_resized_crop(img, (48, 48), (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(2))
    assert tuple(a.shape) == (3, 48, 48) and torch.equal(a, b) and not torch.equal(a, c)


def test_color_jitter_changes_colour_within_its_range():
    img = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    outs = [color_jitter(img, 0.5, 0.0, 0.0, torch.Generator().manual_seed(s)) for s in range(20)]
    values = [int(o[0, 0, 0]) for o in outs]
    assert min(values) >= 50 and max(values) <= 150 and len(set(values)) > 5


def test_hue_turns_the_colour_circle_and_keeps_gray_and_value():
    img = decode(_jpeg(40, 30)).clone()
    img[1, :10] = 90  # some green in the red and blue halves
    assert torch.equal(adjust_hue(img, 0.0), img)
    back = adjust_hue(adjust_hue(img, 0.5), 0.5)  # half the circle twice: all the way round
    assert (back.int() - img.int()).abs().max() <= 1
    assert (adjust_hue(img, 0.5).int() - img.int()).abs().float().mean() > 50
    red = torch.tensor([255, 0, 0], dtype=torch.uint8).reshape(3, 1, 1)
    assert adjust_hue(red, -1 / 3).flatten().tolist() == [0, 0, 255]  # a third back from red: blue
    gray = img[:1]
    assert torch.equal(adjust_hue(gray, 0.3), gray)
    with pytest.raises(BadInput, match="hue_factor"):
        adjust_hue(img, 0.6)
    # ColorJitter's hue moves the hue only: each pixel keeps its HSV value (its largest channel).
    outs = [color_jitter(img, 0.0, 0.0, 0.0, torch.Generator().manual_seed(s), hue=0.2) for s in range(5)]
    for out in outs:
        assert (out.amax(0).int() - img.amax(0).int()).abs().max() <= 1
    assert len({tuple(o.flatten().tolist()) for o in outs}) == 5
    assert torch.equal(color_jitter(gray, 0.0, 0.0, 0.0, torch.Generator().manual_seed(0), hue=0.5), gray)


def test_auto_augment_runs_in_the_training_path_after_the_crop_and_follows_the_seed():
    img = decode(_jpeg(200, 120))
    plain = PhotoTransformConfig(size=(32, 32))
    for policy in ("trivialaugment", "randaugment"):
        cfg = PhotoTransformConfig(size=(32, 32), auto_augment=policy, hue=0.05)
        outs = [train_transform(img, cfg, torch.Generator().manual_seed(s)) for s in range(8)]
        assert all(o.shape == (3, 32, 32) and o.dtype == torch.float32 for o in outs)
        assert torch.equal(outs[3], train_transform(img, cfg, torch.Generator().manual_seed(3)))
        # the same seed gives the same crop and flip, so a difference is the policy's and the hue's
        same_crop = [train_transform(img, plain, torch.Generator().manual_seed(s)) for s in range(8)]
        assert sum(not torch.equal(a, b) for a, b in zip(outs, same_crop, strict=True)) >= 6


def test_eval_and_train_paths_give_the_model_input():
    cfg = PhotoTransformConfig(size=(32, 32), brightness=0.2, contrast=0.2, saturation=0.2)
    img = decode(_jpeg(200, 120))
    ev = eval_transform(img, cfg)
    assert tuple(ev.shape) == (3, 32, 32) and ev.dtype == torch.float32
    assert torch.equal(ev, eval_transform(img, cfg))  # deterministic: serving must get the same
    tr = train_transform(img, cfg, torch.Generator().manual_seed(0))
    assert tuple(tr.shape) == (3, 32, 32) and not torch.equal(tr, ev)
    lb = eval_transform(img, PhotoTransformConfig(size=(32, 32), resize="letterbox"))
    assert tuple(lb.shape) == (3, 32, 32) and not torch.equal(lb, ev)


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"size": (4, 4)}, "size"),
        ({"resize": "stretch"}, "resize"),
        ({"scale": (0.5, 0.1)}, "scale"),
        ({"hflip": 2}, "hflip"),
        ({"mean": (0.5,)}, "mean"),
        ({"auto_augment": "autoaugment"}, "auto_augment"),
        ({"hue": 0.6}, "hue"),
        ({"ra_num_ops": 0}, "ra_num_ops"),
        ({"ra_magnitude": 31}, "ra_magnitude"),
    ],
)
def test_bad_settings_name_the_field(bad, field):
    with pytest.raises(BadInput, match=field):
        PhotoTransformConfig(**bad)


def test_the_new_fields_are_recorded_and_a_transform_recorded_before_them_still_loads():
    cfg = PhotoTransformConfig(size=(32, 32), auto_augment="randaugment", ra_num_ops=3, ra_magnitude=12, hue=0.1)
    back = config_from_dict(json.loads(cfg.to_json()))  # as a dataset's or model's record stores it
    assert back == cfg and (back.auto_augment, back.ra_num_ops, back.ra_magnitude, back.hue) == (
        "randaugment",
        3,
        12,
        0.1,
    )
    old = {  # a PhotoTransformConfig as recorded before hue and the policies existed
        "type": "PhotoTransformConfig",
        "version": 1,
        "size": [32, 32],
        "resize": "shorter_crop",
        "crop_fraction": 0.875,
        "scale": [0.35, 1.0],
        "ratio": [0.75, 1.3333333333333333],
        "hflip": 0.5,
        "brightness": 0.2,
        "contrast": 0.2,
        "saturation": 0.2,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    loaded = config_from_dict(old)
    assert loaded == PhotoTransformConfig(
        size=(32, 32), scale=(0.35, 1.0), brightness=0.2, contrast=0.2, saturation=0.2
    )
    assert (loaded.auto_augment, loaded.hue) == ("none", 0.0)  # off: it trains as it did


def test_training_decodes_a_large_jpeg_smaller_but_never_below_its_smallest_crop():
    import io

    import numpy as np
    from PIL import Image

    from datamoat.data.photo_transforms import decode, train_min_side

    yy, xx = np.mgrid[0:1200, 0:1600]
    smooth = np.stack([xx * 255 // 1600, yy * 255 // 1200, (xx + yy) * 255 // 2800], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(smooth).save(buf, "JPEG", quality=92)
    cfg = PhotoTransformConfig(size=(64, 64), scale=(0.35, 1.0))
    need = train_min_side(cfg)
    small, full = decode(buf.getvalue(), min_side=need), decode(buf.getvalue())
    assert full.shape == (3, 1200, 1600)
    assert min(small.shape[1:]) >= need and small.shape[1] * 2 <= full.shape[1]  # decoded at 1/2 or less
    # The same picture, only smaller: the full decode brought to that size matches it closely.
    down = torch.nn.functional.interpolate(full[None].float(), size=small.shape[1:], mode="area")[0]
    assert (down - small.float()).abs().mean() < 3
    png = io.BytesIO()
    Image.fromarray(smooth).save(png, "PNG")
    assert decode(png.getvalue(), min_side=need).shape == full.shape  # only JPEG has DCT scaling
