"""Turn request payloads into raw pixel arrays (N, C, H, W), safely.

Images are decoded with Pillow, PNG and JPEG only. The pixel count is read
from the header and refused above `max_pixels` before any pixel is decoded
(a decompression bomb is a small file that inflates to gigabytes). JSON
and ``.npy`` inputs (``np.save``) are raw 0..255 values and must already
have the version's shape.

Each parser returns a *prepare* function ``(C, H, W) -> float32 (N, C, H, W)``
so a request can be re-shaped for another version if the served model
changes while it waits in the batch queue.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from datamoat.errors import BadInput, TooLarge, Unprocessable, UnsupportedMedia

__all__ = [
    "Prepare",
    "PREDICT_BODY",
    "install_pillow_limits",
    "parse_image",
    "parse_array",
    "parse_json",
    "parse_npy",
    "parse_payload",
    "read_body",
    "read_payload",
    "shape_help",
]

# (the version's input shape (C, H, W), its photo transform or None) -> float32 (N, C, H, W) in 0..255
Prepare = Callable[[tuple[int, int, int], dict[str, Any] | None], np.ndarray]


def install_pillow_limits(max_pixels: int) -> None:
    """Pillow's own bomb guard as a second line: its limit, and its warning as an error.

    Both are process-wide settings of Pillow, as its docs recommend.
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def parse_image(data: bytes, max_pixels: int) -> Prepare:
    """Decode a PNG/JPEG upload; the result resizes it to a version's input.

    >>> parse_image(b"not an image", 1 << 20)
    Traceback (most recent call last):
    ...
    datamoat.errors.BadInput: the upload is not a readable PNG or JPEG image: send a valid .png or .jpg file
    """
    from PIL import Image

    bad = BadInput("the upload is not a readable PNG or JPEG image: send a valid .png or .jpg file")
    try:
        img = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
        w, h = img.size  # from the header: nothing decoded yet
        if w * h > max_pixels:
            raise TooLarge(f"image of {w}x{h} is over the limit of {max_pixels} pixels: downscale it")
        img.load()
    except TooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # Pillow's guard, from the header
        raise TooLarge(
            f"image is over the limit of {max_pixels} pixels (a decompression bomb?): downscale it"
        ) from None
    except Exception:  # UnidentifiedImageError, OSError, SyntaxError...: whatever a hostile file triggers
        raise bad from None

    def prepare(shape: tuple[int, int, int], photo: dict[str, Any] | None) -> np.ndarray:
        c, hh, ww = shape
        if c not in (1, 3):
            raise Unprocessable(f"the model takes {c}-channel inputs, which an image cannot give: send JSON inputs")
        if photo is not None:  # a photo model: exactly the geometry its training evaluated with
            return _photo_input(img, c, photo)
        try:
            im = img.convert("L" if c == 1 else "RGB")
            if im.size != (ww, hh):
                im = im.resize((ww, hh), Image.Resampling.BILINEAR)
        except Exception:  # exotic modes Pillow cannot convert
            raise bad from None
        a = np.asarray(im, dtype=np.float32)  # (H, W) or (H, W, 3)
        return (a[None, None] if c == 1 else a.transpose(2, 0, 1)[None]).copy()  # (1, C, H, W)

    return prepare


def _photo_input(img: Any, channels: int, photo: dict[str, Any]) -> np.ndarray:
    # numpy and Pillow only (photo_fit): the server image and edge devices have no torch
    from datamoat.configs import config_from_dict
    from datamoat.data.photo_fit import fit, from_pil  # registers PhotoTransformConfig for config_from_dict

    try:
        arr = from_pil(img, channels)  # (C, h, w) uint8, EXIF orientation applied
    except Exception:  # exotic modes Pillow cannot convert
        raise BadInput("the upload is not a readable PNG or JPEG image: send a valid .png or .jpg file") from None
    x = fit(arr, config_from_dict(photo))  # type: ignore[arg-type]  # (C, H, W) uint8
    return x[None].astype(np.float32)  # (1, C, H, W)


def shape_help(shape: tuple[int, int, int]) -> str:
    c, h, w = shape
    ok = [f"({h}, {w})", f"(N, {h}, {w})"] if c == 1 else []
    return " or ".join([*ok, f"({c}, {h}, {w})", f"(N, {c}, {h}, {w})"])


def parse_json(body: bytes) -> Prepare:
    """Read ``{"inputs": ...}``: one image (H,W)/(C,H,W) or a batch (N,C,H,W)/(N,H,W).

    >>> parse_json(b'{"inputs": [[0, 255], [1, 2]]}')((1, 2, 2), None).shape
    (1, 1, 2, 2)
    """
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadInput('the body is not valid JSON: send {"inputs": [...]} with raw 0..255 pixel values') from None
    if not isinstance(doc, dict) or "inputs" not in doc:
        raise Unprocessable(
            'the JSON body needs an "inputs" field: send {"inputs": [...]} with raw 0..255 pixel values'
        )
    return _shaped(_numeric(doc["inputs"]))


def parse_array(arr: np.ndarray) -> Prepare:
    """The prepare function for a numeric array of raw 0..255 pixels in any shape `/v1/predict`
    takes (a tensor of the Open Inference Protocol, say).

    >>> parse_array(np.zeros((2, 1, 3, 3), np.uint8))((1, 3, 3), None).shape
    (2, 1, 3, 3)
    """
    return _shaped(_in_range(np.asarray(arr, np.float32), "send raw pixel values in 0..255"))


def _shaped(arr: np.ndarray) -> Prepare:
    """The prepare function for a numeric array: accept the shapes a version takes."""

    def prepare(shape: tuple[int, int, int], photo: dict[str, Any] | None = None) -> np.ndarray:
        c, h, w = shape
        if arr.ndim == 2 and c == 1 and arr.shape == (h, w):
            return arr[None, None]
        if arr.ndim == 3 and arr.shape == (c, h, w):
            return arr[None]
        if arr.ndim == 3 and c == 1 and arr.shape[1:] == (h, w) and len(arr):
            return arr[:, None]
        if arr.ndim == 4 and arr.shape[1:] == (c, h, w) and len(arr):
            return arr
        raise Unprocessable(f"inputs have shape {tuple(arr.shape)}; this model takes {shape_help(shape)}")

    return prepare


NPY_TYPES = ("application/x-npy", "application/octet-stream")


def parse_npy(body: bytes) -> Prepare:
    """Read a NumPy ``.npy`` body (``np.save``): the shapes and 0..255 values JSON takes, without the text.

    A 28x28 uint8 image is 912 bytes instead of about 3 KB of JSON, and the
    server reads it in one copy instead of parsing 784 numbers. Pickled
    (object) arrays are refused: unpickling a request would run its code.

    >>> buf = io.BytesIO(); np.save(buf, np.zeros((28, 28), np.uint8))
    >>> parse_npy(buf.getvalue())((1, 28, 28), None).shape
    (1, 1, 28, 28)
    """
    fix = "send one array written by numpy.save (numbers in 0..255), or JSON"
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception:  # ValueError (a pickle, a bad header), EOFError...: nothing hostile gets further
        raise BadInput(f"the body is not a readable .npy array: {fix}") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive loads as a mapping of arrays
        raise BadInput(f"the body is an .npz archive, not one .npy array: {fix}")
    if arr.dtype.kind not in "iuf":
        raise Unprocessable(f"the .npy array holds non-numeric values: {fix}")
    return _shaped(_in_range(arr.astype(np.float32), fix))


def _numeric(inputs: Any) -> np.ndarray:
    fix = "send a rectangular array of numbers in 0..255"
    # Booleans are numbers to numpy but almost surely a client bug.
    if isinstance(inputs, bool | str | dict) or inputs is None:
        raise Unprocessable(f'"inputs" must be an array of pixel values: {fix}')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = np.asarray(inputs)
    except (ValueError, TypeError, RecursionError):
        raise Unprocessable(f'"inputs" is ragged or nested too deep: {fix}') from None
    if arr.dtype.kind not in "iuf" or arr.dtype == object:
        raise Unprocessable(f'"inputs" holds non-numeric values: {fix}')
    return _in_range(arr.astype(np.float32), fix)


def _in_range(arr: np.ndarray, fix: str) -> np.ndarray:
    if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 255):
        raise Unprocessable(f"the inputs have values outside 0..255: {fix}")
    return arr


def parse_payload(kind: str, data: bytes, max_pixels: int) -> Prepare:
    """Parse a body `read_payload` returned, by its kind.

    >>> parse_payload("json", b'{"inputs": [[0, 1], [2, 3]]}', 1 << 20)((1, 2, 2), None).shape
    (1, 1, 2, 2)
    """
    if kind == "json":
        return parse_json(data)
    if kind == "npy":
        return parse_npy(data)
    return parse_image(data, max_pixels)


# -- /v1/predict bodies ---------------------------------------------------------------
_ANY = {"description": "One image (H, W) or (C, H, W), or a batch (N, C, H, W) or (N, H, W); raw 0..255 values."}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {"inputs": {"type": "array", "items": {}, **_ANY}},
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


async def read_body(request: Any, max_bytes: int, what: str = "the request body") -> bytes:
    """A request's body, read as it streams and refused (413) the moment it
    passes `max_bytes`, whatever Content-Length said or did not say (a
    chunked body has none): memory never holds more than the limit.

    >>> import asyncio
    >>> from starlette.requests import Request
    >>> async def chunks():
    ...     return {"type": "http.request", "body": b"x" * 10, "more_body": True}
    >>> asyncio.run(read_body(Request({"type": "http", "headers": []}, chunks), 25))
    Traceback (most recent call last):
    ...
    datamoat.errors.TooLarge: the request body is over the 25-byte limit: send less
    """
    too_big = TooLarge(f"{what} is over the {max_bytes}-byte limit: send less")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > max_bytes):
        raise too_big if length.isdigit() else BadInput("invalid Content-Length header")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_big
    return bytes(body)


async def read_payload(request: Any, max_bytes: int) -> tuple[str, bytes]:
    """A /v1/predict body as ('json' | 'npy' | 'image', bytes), by Content-Type."""
    from starlette.requests import Request

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, max_bytes)
    if ctype == "application/json" or ctype.endswith("+json"):
        return "json", body
    if ctype in ("image/png", "image/jpeg"):
        return "image", body
    if ctype in NPY_TYPES:
        return "npy", body
    if ctype != "multipart/form-data":
        raise UnsupportedMedia(
            f"unsupported Content-Type {ctype or 'none'!r}: send JSON {{\"inputs\": ...}}, a .npy array (application/x-npy) or a multipart upload with field 'file'"
        )

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8, max_part_size=max_bytes)
    except Exception:
        raise BadInput("malformed multipart body: send one image as multipart field 'file'") from None
    f = form.get("file")
    if f is None or isinstance(f, str):
        raise Unprocessable("multipart field 'file' must hold the image: send it as a file upload named 'file'")
    data = await f.read()
    await form.close()
    return "image", data
