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
"""


def register(sub) -> None:
    p = sub.add_parser("serve", help="web UI and HTTP API with a job queue", epilog=EXAMPLES,
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
    p.set_defaults(run=run_serve)


def settings_from_args(args):
    from ..server.settings import ServerSettings

    token = args.token if args.token is not None else os.environ.get("SDLAB_TOKEN") or None
    return ServerSettings(output_dir=args.output_dir, model=args.model, vae=args.vae, host=args.host, port=args.port,
                          token=token, state_dir=args.state_dir, devices=tuple(args.device or [None]),
                          dtype=args.dtype, max_queue=args.max_queue,
                          max_upload_bytes=int(args.max_upload_mb * 2**20), max_side=args.max_side,
                          lora_dirs=tuple(args.lora_dir), vae_dirs=tuple(args.vae_dir))


def run_serve(args) -> int:
    import uvicorn

    from ..pipeline import Pipeline
    from ..server.app import create_app
    from ..server.lock import QueueLock

    settings = settings_from_args(args)  # ConfigError (e.g. no token off loopback) -> exit 2
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
