"""`sdlab convert`: LoRA files between diffusers/peft and kohya layouts, embeddings between
diffusers and AUTOMATIC1111 layouts, a model folder to one original-layout (A1111) file. Every
key is matched; nothing is silently dropped; an existing output is never replaced."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  sdlab convert runs/lora/lora/pytorch_lora_weights.safetensors my_lora.safetensors --to kohya
  sdlab convert my_lora.safetensors back/pytorch_lora_weights.safetensors --to diffusers --model path/to/model
  sdlab convert runs/ti/learned_embeds.safetensors my-shape.safetensors --to a1111
  sdlab convert runs/finetune/model my-model.safetensors --to single-file   (writes my-model.yaml too)
"""


# this module's commands and their lines in `sdlab --help`
HELP = {"convert": "convert LoRA (diffusers <-> kohya) and embedding (diffusers <-> a1111) files, "
                   "or a model folder to one single-file checkpoint"}


def register(sub) -> None:
    p = sub.add_parser("convert", help=HELP["convert"],
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="input .safetensors (or an A1111 .pt embedding); a model folder for --to single-file")
    p.add_argument("dst", help="output .safetensors (must not exist)")
    p.add_argument("--to", required=True, choices=("diffusers", "kohya", "a1111", "single-file"),
                   help="LoRA: diffusers or kohya; embedding: diffusers or a1111; model folder: single-file "
                        "(original SD layout, as A1111 and diffusers' from_single_file read, with DST.yaml beside it)")
    p.add_argument("--model", default=None, help="model whose modules the LoRA keys must match (default: shipped)")
    p.set_defaults(run=run_convert)


def run_convert(args) -> int:
    from ..errors import ConfigError

    src, dst = Path(args.src), Path(args.dst)
    if dst.is_dir():
        raise ConfigError(f"'{dst}' is a folder; give the output file, e.g. {dst / 'converted.safetensors'}")
    if dst.suffix != ".safetensors":
        raise ConfigError(f"the output '{dst}' must be a .safetensors file (sdlab writes no pickles)")
    if dst.exists() or dst.is_symlink():
        raise ConfigError(f"'{dst}' exists; choose another output file or remove it (sdlab replaces no file)")
    if args.to == "single-file":
        return _single_file(src, dst)
    from ..models.lora import is_lora_file

    if is_lora_file(src, "input file"):
        from ..models import lora
        from ..pipeline import Pipeline

        if args.to == "a1111":
            raise ConfigError("a LoRA converts --to diffusers or --to kohya (a1111 reads kohya files)")
        pipe = Pipeline.load(args.model, device="cpu")
        path, n = lora.convert(src, dst, args.to, pipe.c.unet, pipe.c.text_encoder)
        print(f"{path} ({n} LoRA layers, {args.to} format)")
        return 0
    from ..text import embeddings

    found = embeddings.read_embedding(src)
    if args.to == "kohya":
        raise ConfigError("an embedding converts --to diffusers or --to a1111")
    if args.to == "a1111" and len(found) != 1:
        raise ConfigError(f"an A1111 embedding file holds one embedding; '{src}' has {len(found)}")
    if args.to == "a1111":
        path = embeddings.save_a1111(dst, dst.stem, next(iter(found.values())))
    else:
        path = embeddings.save_diffusers(dst, {t if t.startswith("<") else f"<{t}>": v for t, v in found.items()})
    print(f"{path} ({len(found)} embedding(s), {args.to} format)")
    return 0


def _single_file(src: Path, dst: Path) -> int:
    from ..errors import ConfigError
    from ..models.ldm_export import check_exportable, export_single_file
    from ..models.loader import load_pipeline_components
    from ..models.single_file import read_json

    if not (src / "model_index.json").is_file():
        raise ConfigError(f"--to single-file converts a diffusers model folder (with model_index.json); '{src}' is not one")
    check_exportable(read_json(src / "unet" / "config.json"), read_json(src / "vae" / "config.json"), src)
    components = load_pipeline_components(src, device="cpu")
    path, side, family = export_single_file(components, dst)
    print(f"{path} ({'SD 1.x' if family == 'sd1' else 'SD 2.x'} single-file layout) and its config {side}")
    if components.scheduler_config.get("rescale_betas_zero_snr"):
        print("note: the model samples with a zero-terminal-SNR schedule, which the .yaml cannot say; "
              "choose it in the reading tool")
    return 0
