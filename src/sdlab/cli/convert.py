"""`sdlab convert`: LoRA files between diffusers/peft and kohya layouts, embeddings between
diffusers and AUTOMATIC1111 layouts. Every key is matched; nothing is silently dropped."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  sdlab convert runs/lora/lora/pytorch_lora_weights.safetensors my_lora.safetensors --to kohya
  sdlab convert my_lora.safetensors back/pytorch_lora_weights.safetensors --to diffusers --model path/to/model
  sdlab convert runs/ti/learned_embeds.safetensors my-shape.safetensors --to a1111
"""


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert LoRA (diffusers <-> kohya) and embedding (diffusers <-> a1111) files",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="input .safetensors (or an A1111 .pt embedding)")
    p.add_argument("dst", help="output .safetensors")
    p.add_argument("--to", required=True, choices=("diffusers", "kohya", "a1111"),
                   help="LoRA: diffusers or kohya; embedding: diffusers or a1111")
    p.add_argument("--model", default=None, help="model whose modules the LoRA keys must match (default: shipped)")
    p.set_defaults(run=run_convert)


def run_convert(args) -> int:
    from ..errors import ConfigError

    src, dst = Path(args.src), Path(args.dst)
    if dst.is_dir():
        raise ConfigError(f"'{dst}' is a folder; give the output file, e.g. {dst / 'converted.safetensors'}")
    if dst.suffix != ".safetensors":
        raise ConfigError(f"the output '{dst}' must be a .safetensors file (sdlab writes no pickles)")
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
