"""Server settings: where to listen, which model, where outputs and the job database live, limits."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import ConfigError

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
MIN_TOKEN_LENGTH = 8


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerSettings:
    """Everything `sdlab serve` needs; validated at construction (ConfigError names the field)."""

    output_dir: Path = Path("outputs")
    model: Optional[str] = None                # None: the shipped model
    vae: Optional[str] = None                  # None: the model's own VAE
    host: str = "127.0.0.1"
    port: int = 7860
    token: Optional[str] = None
    state_dir: Optional[Path] = None           # jobs.sqlite3 and uploads/; default OUTPUT_DIR/.sdlab-server
    devices: tuple[Optional[str], ...] = (None,)  # one worker thread per device; None = best available
    dtype: Optional[str] = None
    max_queue: int = 100                       # queued jobs beyond this are refused with 503
    max_upload_bytes: int = 10 * 2**20
    max_json_bytes: int = 2**20                # a JSON request body (uploads have max_upload_bytes)
    max_upload_pixels: int = 4096 * 4096
    max_side: int = 1024
    max_images: int = 16                       # batch_size * batch_count per job
    preview_interval: float = 0.25             # seconds between preview decodes
    lora_dirs: tuple[Path, ...] = ()           # where prompt tags <lora:NAME:W> find NAME.safetensors
    vae_dirs: tuple[Path, ...] = ()            # VAE files / folders a job may pick by name
    controlnet_dirs: tuple[Path, ...] = ()     # ControlNet files / folders a txt2img job may pick by name
    merge_dirs: tuple[Path, ...] = ()          # models and LoRA files a merge job may pick by name

    def __post_init__(self):
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        for name in ("lora_dirs", "vae_dirs", "controlnet_dirs", "merge_dirs"):
            object.__setattr__(self, name, tuple(Path(d) for d in getattr(self, name)))
            for folder in getattr(self, name):
                if not folder.is_dir():
                    raise ConfigError(f"{name[:-5]} dir {str(folder)!r} is not a folder")
        if self.state_dir is not None:
            object.__setattr__(self, "state_dir", Path(self.state_dir))
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, got {self.port!r}")
        if self.token is not None and len(self.token) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"token must have at least {MIN_TOKEN_LENGTH} characters")
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(f"binding {self.host!r} (not loopback) needs an access token: pass --token or set "
                              "SDLAB_TOKEN, or bind 127.0.0.1")
        for name in ("max_queue", "max_upload_bytes", "max_json_bytes", "max_upload_pixels", "max_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_side < 8 or self.max_side % 8:
            raise ConfigError(f"max_side must be a multiple of 8 and >= 8, got {self.max_side}")
        if not self.devices:
            raise ConfigError("devices must name at least one device")

    @property
    def state_path(self) -> Path:
        return self.state_dir or self.output_dir / ".sdlab-server"

    @property
    def db_path(self) -> Path:
        return self.state_path / "jobs.sqlite3"

    @property
    def upload_dir(self) -> Path:
        return self.state_path / "uploads"
