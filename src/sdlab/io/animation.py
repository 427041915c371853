"""Writing frame sequences: animated GIF (Pillow), MP4 (imageio + imageio-ffmpeg, the optional
`video` extra), or a single PNG. Every file is written atomically (sdlab.io.atomic), and an
existing file is not replaced unless asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import ConfigError
from .atomic import atomic_save
from .images import to_rgb

ANIMATION_SUFFIXES = (".gif", ".mp4")
VIDEO_HINT = "pip install 'sdlab[video]' (imageio and imageio-ffmpeg)"
MACRO_BLOCK = 16  # H.264 encoders want sides divisible by 16


def check_fps(fps) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 120:
        raise ConfigError(f"fps must be a number in (0, 120], got {fps!r}")
    return float(fps)


def _frames(frames: Sequence[Image.Image]) -> list[Image.Image]:
    frames = [to_rgb(f) for f in frames]
    if not frames:
        raise ConfigError("an animation needs at least one frame")
    size = frames[0].size
    if any(f.size != size for f in frames):
        raise ConfigError("all frames of an animation must have the same size")
    return frames


def save_gif(path: str | Path, frames: Sequence[Image.Image], fps: float = 4.0, loop: int = 0, *,
             replace: bool = False) -> Path:
    """An animated GIF with one frame per image (`loop=0`: repeat forever)."""
    frames, duration = _frames(frames), round(1000 / check_fps(fps))
    return atomic_save(path, lambda tmp: frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                                                         duration=duration, loop=loop, optimize=False),
                       replace=replace)


def _pad_to_block(frame: Image.Image) -> np.ndarray:
    w, h = (-(-s // MACRO_BLOCK) * MACRO_BLOCK for s in frame.size)
    canvas = Image.new("RGB", (w, h))
    canvas.paste(frame, (0, 0))
    return np.asarray(canvas)


def video_available() -> bool:
    try:
        import imageio  # noqa: F401
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def require_video() -> None:
    """ConfigError with the install hint unless MP4 writing is available."""
    if not video_available():
        raise ConfigError(f"writing .mp4 needs imageio and imageio-ffmpeg: {VIDEO_HINT}; or write a .gif")


def save_mp4(path: str | Path, frames: Sequence[Image.Image], fps: float = 4.0, *, replace: bool = False) -> Path:
    """An H.264 MP4 through imageio-ffmpeg; frames are padded to multiples of 16 pixels."""
    fps = check_fps(fps)
    require_video()
    import imageio.v3 as iio

    data = np.stack([_pad_to_block(f) for f in _frames(frames)])

    def write(tmp: Path) -> None:  # the temp name has no .mp4 suffix: name the container for ffmpeg
        iio.imwrite(tmp, data, extension=".mp4", plugin="FFMPEG", fps=fps, codec="libx264",
                    macro_block_size=1, quality=8, output_params=["-f", "mp4"])
        if Path(tmp).stat().st_size == 0:
            raise ConfigError(f"ffmpeg wrote nothing for '{path}'")

    return atomic_save(path, write, replace=replace)


def save_animation(path: str | Path, frames: Sequence[Image.Image], fps: float = 4.0, *,
                   replace: bool = False) -> Path:
    """Write `frames` as .gif or .mp4, chosen by the suffix of `path`; an existing `path` is
    kept (OutputExists) unless `replace`."""
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        return save_gif(path, frames, fps, replace=replace)
    if suffix == ".mp4":
        return save_mp4(path, frames, fps, replace=replace)
    raise ConfigError(f"animation file must end in {' or '.join(ANIMATION_SUFFIXES)}, got '{path}'")
