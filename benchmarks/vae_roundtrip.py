"""What a VAE keeps of the shapes world: the oracle reads fresh renders after their round trip
(encode, mode, decode) through the model's own VAE and through each `--vae`, per fill (the
reserved striped one and the base solid one) and object size. Shows whether a style's detail
survives the decoder before any UNet is trained on it (`sdlab train vae-decoder`). --results
records the table in benchmarks/RESULTS.md, in place of this script's section with the same title.

    python benchmarks/vae_roundtrip.py --vae runs/vae/vae --n 256
"""

from __future__ import annotations

import argparse
import random
import sys

import torch

from report import cpu_description, publish
from sdlab import Pipeline
from sdlab.recipe.data import render_batch, to_images
from sdlab.world.metrics import accuracy
from sdlab.world.scene import SceneSampler
from sdlab.world.spec import SIZES

FILLS = ("striped", "solid")


@torch.no_grad()
def round_trip(vae, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.decode(vae.encode(c).latent_dist.mode()).sample for c in x.split(64)])


def read(vae, n: int, seed: int) -> dict[str, float]:
    """Oracle fill / shape / all-attribute rates of round-tripped single-object renders, per fill,
    and the fill rate per object size."""
    out = {}
    for fill in FILLS:
        scenes, x = render_batch(SceneSampler(fills=(fill,), two_object_prob=0.0), random.Random(seed), n)
        images = to_images(round_trip(vae, x))
        acc = accuracy(scenes, images)
        out.update({f"{fill} {k}": acc[k] for k in ("fill", "shape", "all")})
        for size in SIZES:
            picked = [(s, im) for s, im in zip(scenes, images) if s.objects[0].size == size]
            out[f"{fill} fill, {size}"] = accuracy(*zip(*picked))["fill"] if picked else float("nan")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="whose VAE is the reference (default: the shipped model)")
    ap.add_argument("--vae", action="append", default=[], help="a VAE to compare (repeatable)")
    ap.add_argument("--n", type=int, default=256, help="renders per fill")
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--results", action="store_true",
                    help="record the table in benchmarks/RESULTS.md (replaces this script's section of the same title)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    base = Pipeline.load(args.model, device="cpu")
    rows = [("model's own", read(base.c.vae, args.n, args.seed))]
    for path in args.vae:
        rows.append((path, read(Pipeline.load(args.model, device="cpu", vae=path).c.vae, args.n, args.seed)))
    keys = list(rows[0][1])
    table = ["| VAE | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    table += [f"| {name} | " + " | ".join(f"{v:.2f}" for v in r.values()) + " |" for name, r in rows]
    title = (f"VAE round trip · {cpu_description()} · {base.c.name} · "
             f"{args.n} single-object renders per fill, oracle readback")
    publish(__file__, title, "\n".join(table), argv, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
