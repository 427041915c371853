"""`sdlab serve`: the local web studio and HTTP API (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import os

EXAMPLES = """examples:
  sdlab serve                                   # http://127.0.0.1:7860, the shipped model
  sdlab serve --model path/to/model --output-dir outputs
  sdlab serve --lora-dir my_loras                # prompts may use <lora:NAME:0.8>
  sdlab serve --vae-dir my_vaes                  # each job may pick one of its VAEs
  SDLAB_TOKEN=a-long-secret sdlab serve --host 0.0.0.0   # other hosts need a token
  sdlab serve --ray --replicas 2                 # two model replicas on a local Ray
  sdlab serve --ray --address ray://head:10001 --device cuda --min-replicas 1 --max-replicas 8
"""


# this module's commands and their lines in `sdlab --help`
HELP = {"serve": "web UI and HTTP API with a job queue"}


def register(sub) -> None:
    p = sub.add_parser("serve", help=HELP["serve"], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--model", default=None, help="diffusers folder or .safetensors file (default: the shipped model)")
    p.add_argument("--vae", default=None, metavar="PATH", help="use this VAE instead of the model's (folder or file)")
    p.add_argument("--output-dir", default="outputs", help="where images are written and served from (default outputs)")
    p.add_argument("--state-dir", default=None, help="job database and uploads (default OUTPUT_DIR/.sdlab-server)")
    p.add_argument("--token", default=None, help="access token (default: $SDLAB_TOKEN); required off loopback")
    p.add_argument("--device", action="append", default=None,
                   help="device to run jobs on, one worker each; repeat for several (default: best available)")
    p.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--max-queue", type=int, default=100, help="waiting jobs beyond this get 503 (default 100)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="upload size limit in MiB (default 10)")
    p.add_argument("--max-side", type=int, default=1024, help="largest width/height accepted (default 1024)")
    p.add_argument("--lora-dir", action="append", default=[], metavar="DIR",
                   help="where prompt tags <lora:NAME:WEIGHT> (A1111 syntax) find NAME.safetensors; repeatable")
    p.add_argument("--vae-dir", action="append", default=[], metavar="DIR",
                   help="VAE files (.safetensors/.pt/.ckpt) and AutoencoderKL folders a job may pick by name "
                        "(A1111's models/VAE); repeatable")
    p.add_argument("--controlnet-dir", action="append", default=[], metavar="DIR",
                   help="ControlNet files (.safetensors) and ControlNetModel folders a txt2img job may pick by name "
                        "(A1111's models/ControlNet); repeatable")
    p.add_argument("--merge-dir", action="append", default=[], metavar="DIR",
                   help="models (diffusers folders, .safetensors files) and LoRA files the studio's merge tab may "
                        "pick by name; merges are written to OUTPUT_DIR/models; repeatable")
    r = p.add_argument_group("replicas on Ray Serve (pip install 'sdlab[ray]'; see docs/distributed.md)")
    r.add_argument("--ray", action="store_true",
                   help="serve the same app from model replicas on Ray Serve; the job records live in one Ray actor "
                        "on this node (default: one process with its SQLite queue)")
    r.add_argument("--replicas", type=int, default=1, help="model replicas (one per GPU with --device cuda)")
    r.add_argument("--min-replicas", type=int, default=None, help="autoscale from this many replicas")
    r.add_argument("--max-replicas", type=int, default=None, help="autoscale up to this many replicas")
    r.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs Ray reserves for a CPU replica")
    r.add_argument("--address", default=None,
                   help="Ray cluster to join, e.g. ray://head:10001 (default: $RAY_ADDRESS, else a local Ray)")
    p.set_defaults(run=run_serve)


def settings_from_args(args):
    from ..server.settings import ServerSettings

    token = args.token if args.token is not None else os.environ.get("SDLAB_TOKEN") or None
    return ServerSettings(output_dir=args.output_dir, model=args.model, vae=args.vae, host=args.host, port=args.port,
                          token=token, state_dir=args.state_dir, devices=tuple(args.device or [None]),
                          dtype=args.dtype, max_queue=args.max_queue,
                          max_upload_bytes=int(args.max_upload_mb * 2**20), max_side=args.max_side,
                          lora_dirs=tuple(args.lora_dir), vae_dirs=tuple(args.vae_dir),
                          controlnet_dirs=tuple(args.controlnet_dir), merge_dirs=tuple(args.merge_dir))


def check_replicas(args) -> None:
    """ConfigError for replica counts that cannot be, or replica options without --ray."""
    from ..errors import ConfigError

    given = [f for f, v in (("--min-replicas", args.min_replicas), ("--max-replicas", args.max_replicas),
                            ("--address", args.address)) if v is not None] + (["--replicas"] if args.replicas != 1 else [])
    if not args.ray and given:
        raise ConfigError(f"{given[0]} needs --ray")
    for name, value in (("replicas", args.replicas), ("min-replicas", args.min_replicas),
                        ("max-replicas", args.max_replicas)):
        if value is not None and not 1 <= value <= 10000:
            raise ConfigError(f"--{name} must be between 1 and 10000, got {value}")
    if args.min_replicas and args.max_replicas and args.min_replicas > args.max_replicas:
        raise ConfigError(f"--min-replicas {args.min_replicas} is above --max-replicas {args.max_replicas}")
    if args.ray and args.device and len(args.device) > 1:
        raise ConfigError("with --ray each replica has one device: give one --device and --replicas N")


def run_ray_serve(args, settings) -> int:
    """The app on Ray Serve until Ctrl-C; the QueueLock keeps a plain server off this state folder."""
    import time

    from ..errors import ConfigError
    from ..server.lock import QueueLock

    try:
        from ..server import ray_serve
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'sdlab[ray]'") from None
    lock = QueueLock.acquire(settings)
    started = ray_serve.connect(args.address, args.replicas * args.cpus_per_replica + 1)
    try:
        ray_serve.deploy(settings, args.replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                         cpus=args.cpus_per_replica)
        print(f"sdlab studio on Ray Serve: http://{settings.host}:{settings.port}/  (outputs: {settings.output_dir})",
              flush=True)
        while True:
            time.sleep(1.0)
    finally:
        ray_serve.shutdown()
        if started:
            import ray

            ray.shutdown()
        lock.release()


def run_serve(args) -> int:
    import uvicorn

    from ..pipeline import Pipeline
    from ..server.app import create_app
    from ..server.lock import QueueLock

    check_replicas(args)
    settings = settings_from_args(args)  # ConfigError (e.g. no token off loopback) -> exit 2
    if args.ray:
        return run_ray_serve(args, settings)
    lock = QueueLock.acquire(settings)   # ServerBusy (another server on this folder) -> exit 2
    try:
        # Load before binding, so a bad --model is a one-line error (ModelLoadError -> exit 2).
        pipes = {d: Pipeline.load(settings.model, dtype=settings.dtype, device=d, vae=settings.vae)
                 for d in settings.devices}
        host = settings.host.strip("[]")
        shown = f"[{host}]" if ":" in host else host
        print(f"sdlab studio on http://{shown}:{settings.port}/  (outputs: {settings.output_dir})", flush=True)
        app = create_app(settings, load_pipeline=pipes.__getitem__, queue_lock=lock)
        # timeout_graceful_shutdown: open event streams must not hold up a shutdown
        uvicorn.run(app, host=host, port=settings.port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        lock.release()
    return 0
