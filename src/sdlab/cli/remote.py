"""`sdlab generate --server URL`: the job runs on a running `sdlab serve` (its model already
loaded), and its images are saved here under the names and with the metadata a local run
writes: the PNG bytes the server made carry that metadata. Torch is never imported.

Only what the studio's POST /api/generate takes is sent; options it does not take (LoRA files,
guidance, trajectories, speed settings) are refused, and so is a server whose model (its A1111
hash) is not the one this run asked for (--model, default the shipped model).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ..errors import SdlabError

# options a local run honours that the server's txt2img job cannot take: (dest, flag)
LOCAL_ONLY = (("lora", "--lora"), ("embedding", "--embedding"), ("lora_dir", "--lora-dir"), ("vae", "--vae"),
              ("dtype", "--dtype"), ("device", "--device"), ("fast", "--fast"), ("deep_cache", "--deep-cache"),
              ("low_memory", "--low-memory"), ("color_guidance", "--color-guidance"),
              ("clip_guidance", "--clip-guidance"), ("classifier_guidance", "--classifier-guidance"),
              ("guidance_scale", "--guidance-scale"), ("trajectory", "--trajectory"))
TERMINAL = ("done", "failed", "cancelled", "interrupted")


class ServerError(SdlabError):
    """The server could not be reached, refused the job, or the job failed there."""


def server_options(p) -> None:
    """--server and --server-token of `sdlab generate`."""
    g = p.add_argument_group("persistent worker (a running `sdlab serve`)")
    g.add_argument("--server", default=None, metavar="URL",
                   help="send the job to the sdlab serve at URL (e.g. http://127.0.0.1:7860), whose model is "
                        "already loaded, and save its images here as a local run would")
    g.add_argument("--server-token", default=None, metavar="TOKEN",
                   help="the server's access token (default: $SDLAB_TOKEN)")


def check_local_only(args) -> None:
    """ServerError naming the first given option the server cannot apply."""
    defaults = {"compile": "off", "deep_cache": 0, "guidance_every": 1}
    for dest, flag in LOCAL_ONLY + (("compile", "--compile"), ("guidance_every", "--guidance-every")):
        value = getattr(args, dest, None)
        if value not in (None, False, [], defaults.get(dest)):
            raise ServerError(f"{flag} is not sent to a server (its jobs take the generation settings only); "
                              "drop --server to run it here")


class Client:
    """JSON over HTTP to one sdlab server, with its token (urllib: no torch, nothing to install)."""

    def __init__(self, url: str, token: str | None):
        if not url.startswith(("http://", "https://")):
            raise ServerError(f"--server must be an http:// or https:// URL, got {url!r}")
        self.url, self.token = url.rstrip("/"), token

    def request(self, path: str, body: dict | None = None, timeout: float = 30.0) -> bytes:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + path, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raise ServerError(self._refused(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerError(f"cannot reach the sdlab server at {self.url} ({reason}); start it with "
                              "`sdlab serve` or drop --server") from None

    def json(self, path: str, body: dict | None = None) -> dict:
        return json.loads(self.request(path, body))

    def _refused(self, exc) -> str:
        try:
            detail = json.loads(exc.read()).get("detail")
        except (ValueError, AttributeError, OSError):
            detail = None
        if isinstance(detail, list):        # pydantic's errors: field and message
            detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}" for d in detail)
        if exc.code == 401:
            return (f"the sdlab server at {self.url} refused the access token (401): give --server-token "
                    "or set SDLAB_TOKEN")
        return f"the sdlab server at {self.url} refused the job ({exc.code}): {detail or exc.reason}"


def check_model(client: Client, model: str | None) -> dict:
    """The server's /api/health, after checking that it runs the model this run asks for."""
    from ..models.hashing import model_hash

    health = client.json("/api/health")
    if "model_hash" not in health:
        raise ServerError(f"the server at {client.url} does not say which model it runs (an older sdlab?); "
                          "drop --server")
    path = Path(model).expanduser() if model else Path(__file__).resolve().parents[1] / "assets" / "shapes-sd"
    wanted = model_hash(path)
    if health["model_hash"] != wanted:
        raise ServerError(f"the server at {client.url} runs model '{health.get('model')}' (hash "
                          f"{health['model_hash']}), not {'--model ' + str(model) if model else 'the shipped model'} "
                          f"(hash {wanted}); give --model with the server's model or drop --server")
    return health


def job_body(args, config_fields: dict) -> dict:
    """The POST /api/generate body: the prompt, a concrete seed and the settings given."""
    import random

    from ..config import GenerationConfig, settings_of

    body = {"prompt": args.prompt}
    for name, (default, _, _) in settings_of(GenerationConfig).items():
        if name in config_fields and name != "prompt" and config_fields[name] is not None:
            if config_fields[name] != default or name in ("steps", "cfg_scale", "sampler", "seed"):
                body[name] = config_fields[name]
    body["seed"] = config_fields.get("seed") if config_fields.get("seed") is not None else random.randrange(2**31)
    return body


def wait(client: Client, job: dict, poll: float = 0.05) -> dict:
    """The finished job, with a progress bar of its steps; ServerError when it failed."""
    from tqdm import tqdm

    with tqdm(desc="sampling (server)", unit="step", file=sys.stderr) as bar:
        while job["state"] not in TERMINAL:
            time.sleep(poll)
            job = client.json(f"/api/jobs/{job['id']}")
            bar.total = job.get("total") or bar.total
            bar.update(job.get("step", 0) - bar.n)
    if job["state"] != "done":
        raise ServerError(f"the job {job['id']} {job['state']} on the server: {job.get('error') or 'no reason given'}")
    return job


def save_remote(client: Client, result: dict, out: Path, grid: bool) -> list[Path]:
    """The job's images, saved as `NNNNN-SEED.png` in `out` (the server's PNG bytes, metadata and
    all) and, for several images, a `grid-NNNNN.png` as a local run writes it."""
    from ..io.atomic import atomic_write_bytes
    from ..io.outputs import output_folder, save_numbered

    out = output_folder(out)
    index, paths = -1, []
    for image in result["images"]:
        data = client.request(image["url"])
        index, path = save_numbered(out, lambda i, s=image["seed"]: f"{i:05d}-{s}.png",
                                    lambda p, d=data: atomic_write_bytes(p, d, replace=False))
        paths.append(path)
    if grid and len(paths) > 1:
        paths.append(_grid(paths, out / f"grid-{index:05d}.png"))
    return paths


def _grid(paths: list[Path], path: Path) -> Path:
    """The grid a local run writes beside `paths`: their images, the first one's metadata."""
    from PIL import Image

    from ..io.images import make_grid
    from ..io.metadata import read_png_metadata, save_png

    images = [Image.open(p).convert("RGB") for p in paths]
    first = read_png_metadata(paths[0])
    return save_png(path, make_grid(images), first["parameters"],
                    {"grid_of": [p.name for p in paths], **(first.get("settings") or {})})


def run_remote(args, config_fields: dict) -> int:
    """`sdlab generate --server URL`: submit, follow, save; prints the paths as a local run does."""
    check_local_only(args)
    token = args.server_token if args.server_token is not None else os.environ.get("SDLAB_TOKEN") or None
    client = Client(args.server, token)
    check_model(client, args.model)
    from ..io.outputs import output_folder

    output_folder(args.out)
    job = wait(client, client.json("/api/generate", job_body(args, config_fields)))
    for path in save_remote(client, job["result"], Path(args.out), grid=not args.no_grid):
        print(path)
    return 0
