"""Files: output images served only from inside the output folder, the gallery listing, uploads.

A requested path is resolved (symlinks followed) and must stay inside the resolved output
folder, name no hidden component, and be an image file; anything else is a 404.
"""

from __future__ import annotations

import io
import uuid
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Optional

from PIL import Image

from ..errors import ImageReadError, SdlabError
from ..io.atomic import atomic_write_bytes, clean_stale_temps
from ..io.images import load_image
from ..io.metadata import read_png_metadata

SERVED_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
UPLOAD_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif"}


class UploadError(SdlabError):
    """An uploaded file is not an acceptable image; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def safe_output_path(output_dir: Path, rel: str) -> Optional[Path]:
    """The file `rel` names inside `output_dir`, or None if it escapes, is hidden or is no image."""
    root = output_dir.resolve()
    if not rel or "\x00" in rel:
        return None
    try:
        path = (root / rel).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if not path.is_relative_to(root) or path == root:
        return None
    inside = path.relative_to(root)
    if any(part.startswith(".") for part in inside.parts) or path.suffix.lower() not in SERVED_SUFFIXES:
        return None
    return path if path.is_file() else None


@lru_cache(maxsize=4096)
def _metadata(path: str, mtime: float, size: int) -> dict:
    try:
        return read_png_metadata(path)
    except ImageReadError:
        return {}


def gallery(output_dir: Path, limit: int = 50, offset: int = 0) -> tuple[list[dict], int]:
    """PNGs in the output folder, newest first, each with its A1111 / sdlab metadata."""
    if not output_dir.is_dir():
        return [], 0
    files = []
    for p in output_dir.glob("*.png"):
        if p.name.startswith(".") or safe_output_path(output_dir, p.name) is None:
            continue
        st = p.stat()
        files.append((st.st_mtime, p.name, p, st))
    files.sort(key=lambda f: (f[0], f[1]), reverse=True)
    items = []
    for mtime, name, p, st in files[offset:offset + limit]:
        meta = _metadata(str(p), mtime, st.st_size)
        items.append({"name": name, "url": f"/files/{name}", "size": st.st_size, "modified": mtime,
                      "grid": name.startswith("grid-"), "prompt": meta.get("prompt", ""),
                      "negative_prompt": meta.get("negative_prompt", ""), "parameters": meta.get("parameters"),
                      "params": meta.get("params", {}), "settings": meta.get("settings")})
    return items, len(files)


def check_upload(data: bytes, max_bytes: int, max_pixels: int) -> str:
    """Check an upload's size, type and pixel count from its header; returns the file suffix."""
    if not data:
        raise UploadError("the uploaded image is empty")
    if len(data) > max_bytes:
        raise UploadError(f"the upload is {len(data)} bytes, over the limit of {max_bytes}", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, (w, h) = img.format, img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadError(f"the image has too many pixels (decompression bomb guard): {exc}", 413) from exc
    except Exception as exc:  # PIL raises many kinds for non-images
        raise UploadError(f"the upload is not an image Pillow can read ({type(exc).__name__})") from exc
    if fmt not in UPLOAD_FORMATS:
        raise UploadError(f"image format {fmt} is not accepted; use one of {', '.join(UPLOAD_FORMATS)}", 415)
    if w * h > max_pixels:
        raise UploadError(f"the image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
                          "(decompression bomb guard)", 413)
    return UPLOAD_FORMATS[fmt]


def save_upload(data: bytes, upload_dir: Path, max_bytes: int, max_pixels: int) -> str:
    """Check, store atomically and fully decode an upload; returns its stored file name."""
    suffix = check_upload(data, max_bytes, max_pixels)
    path = upload_dir / f"{uuid.uuid4().hex}{suffix}"
    atomic_write_bytes(path, data)
    try:
        load_image(path, max_pixels=max_pixels)
    except ImageReadError as exc:
        path.unlink(missing_ok=True)
        raise UploadError(str(exc).replace(str(path), "upload")) from exc
    return path.name


def clean_server_temps(output_dir: Path, upload_dir: Path) -> list[Path]:
    """Remove the temp files and folders of atomic writes that a killed server left: outputs,
    attention maps, training runs' checkpoints, uploads (what a live process writes is kept)."""
    return (clean_stale_temps(output_dir, depth=1) + clean_stale_temps(output_dir / "training", depth=2)
            + clean_stale_temps(upload_dir, depth=1))
