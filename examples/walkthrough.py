"""A deep dive into Stable Diffusion, on the shipped shapes-world model.

An executable script with notebook cells (`# %%`; open it in VS Code or Jupytext): the
components, the VAE round trip, the tokenizer and embeddings, the sampling loop written out
by hand, classifier-free guidance, img2img, embedding mixing, loss guidance, attention maps
and a prompt-to-prompt edit. Every figure goes to --out; the oracle reads what it can.

    python examples/walkthrough.py --out walkthrough
"""

# %% set-up
import argparse
import json
from pathlib import Path

import torch

from sdlab import GenerationConfig, Pipeline
from sdlab.io.images import make_grid
from sdlab.world import oracle

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--out", default="walkthrough")
ap.add_argument("--steps", type=int, default=25)
ap.add_argument("--model", default=None)
args, _ = ap.parse_known_args()
OUT = Path(args.out)
OUT.mkdir(parents=True, exist_ok=True)
PROMPT = "a large red circle on the left on a blue background"
facts = {}


def show(name, images, cols=None):
    """Save a figure (a grid for lists) and remember its path."""
    img = make_grid(images, cols=cols or len(images)) if isinstance(images, list) else images
    path = OUT / f"{name}.png"
    img.resize((img.width * 2, img.height * 2)).save(path)
    facts.setdefault("figures", []).append(str(path))
    return img


# %% 1. The components: a VAE, a CLIP text encoder + tokenizer, a UNet, a noise schedule
pipe = Pipeline.load(args.model)
c = pipe.c
facts["parameters_M"] = {name: round(sum(p.numel() for p in getattr(c, name).parameters()) / 1e6, 2)
                         for name in ("unet", "vae", "text_encoder")}
facts["latent_shape"] = [c.unet.config.in_channels, c.unet.config.sample_size, c.unet.config.sample_size]
facts["prediction_type"] = c.prediction_type

# %% 2. The VAE round trip: pixels <-> latents with many times fewer numbers
from sdlab.recipe.data import to_images, to_tensor  # noqa: E402
from sdlab.world.render import render  # noqa: E402
from sdlab.world.scene import single_object_scene  # noqa: E402
import random  # noqa: E402

scene = single_object_scene("star", "yellow", "large", "center", "black", random.Random(0))
x = to_tensor([render(scene)])
latents = pipe.encode_image(x)
facts["vae_shapes"] = {"pixels": list(x.shape[1:]), "latents": list(latents.shape[1:])}
facts["vae_fewer_numbers"] = x[0].numel() / latents[0].numel()      # 3x64x64 / 4x16x16 = 12 here
back = to_images(pipe.decode(latents))[0]
facts["vae_round_trip_oracle_shape"] = oracle.read(back).objects[0].shape if oracle.read(back).objects else None
channels = [to_images(latents[:, i:i + 1].repeat(1, 3, 1, 1) / latents.abs().max())[0].resize(back.size)
            for i in range(latents.shape[1])]
show("02-vae-round-trip", [render(scene), back] + channels)

# %% 3. Tokenizer and embeddings: ids, padding to 77, token + position embeddings
from sdlab.text.tokens import inspect_tokens, position_embeddings, token_embeddings  # noqa: E402

rows = inspect_tokens(c.tokenizer, PROMPT)
facts["tokens"] = [r["token"] for r in rows if not r["padding"]]
ids = pipe.tokenize([PROMPT])
tok_emb, pos_emb = token_embeddings(c.text_encoder, ids), position_embeddings(c.text_encoder)
cond = pipe.encode_prompt([PROMPT])
facts["embedding_shapes"] = {"token": list(tok_emb.shape), "position": list(pos_emb.shape), "cond": list(cond.shape)}

# %% 4. The loop by hand: Euler in sigma space, x = x0 + sigma * eps, with CFG in one batch
from sdlab.sampling import get_sigmas  # noqa: E402

uncond = pipe.encode_prompt([""])
scale = pipe.generation_defaults["cfg_scale"]   # the model's recommended CFG scale (SD's is 7.5)
sigmas = get_sigmas(pipe.schedule, args.steps).float()
g = torch.Generator().manual_seed(1)
x = torch.randn(1, *facts["latent_shape"], generator=g) * sigmas[0]
frames = []
with torch.no_grad():
    for i in range(len(sigmas) - 1):
        both = pipe.denoiser(torch.cat([x, x]), sigmas[i].repeat(2), torch.cat([uncond, cond]))
        x0_uncond, x0_cond = both.chunk(2)
        x0 = x0_uncond + scale * (x0_cond - x0_uncond)        # classifier-free guidance
        d = (x - x0) / sigmas[i]                                  # the ODE's direction
        x = x + d * (sigmas[i + 1] - sigmas[i])                   # one Euler step
        if i % max(1, args.steps // 5) == 0:
            frames.append(to_images(pipe.decode(x0))[0])
manual = to_images(pipe.decode(x))[0]
show("04-manual-loop-x0-over-steps", frames + [manual])
library = pipe.generate(GenerationConfig(PROMPT, steps=args.steps, sampler="Euler", seed=1)).images[0]
facts["manual_vs_library_max_pixel_diff"] = int(max(abs(a - b) for a, b in zip(manual.tobytes(), library.tobytes())))

# %% 5. Classifier-free guidance: the same seed at scales 1, 3, 7.5, 12
cfg_images = [pipe.generate(GenerationConfig(PROMPT, steps=args.steps, cfg_scale=s, seed=2)).images[0]
              for s in (1.0, 3.0, 7.5, 12.0)]
show("05-cfg-scales", cfg_images)

# %% 6. img2img (SDEdit): noise a rendered scene part way, denoise toward a new prompt
# Strength s runs the last int(steps * s) steps, from the input's latent plus that step's noise:
# a low strength stays near the input, a high one follows the prompt. The CFG scale is low here.
# At strength 0.3 (the last 3 of 10 steps) too little noise is left to redraw the star as the
# prompt's square, and the shipped model leaves a blob that is neither (10 steps: a red shape,
# facts.json's img2img_oracle); from 0.6 it draws the green square. (The img2img steps and start
# noise are diffusers' own; the effect is this model's.)
from sdlab.sampling.strength_sweep import strength_sweep  # noqa: E402

sweep = strength_sweep(pipe, render(scene), GenerationConfig("a large green square on a black background",
                                                             steps=args.steps, cfg_scale=2.0, seed=3),
                       [0.3, 0.6, 0.9])
show("06-img2img-strengths", sweep.grid)
facts["img2img_oracle"] = {f"{s:g}": [[o.color, o.shape] for o in oracle.read(r.images[0]).objects]
                           for s, r in zip(sweep.strengths, sweep.results)}

# %% 7. Embedding mixing: half "circle", half "square" at the token embedding
from sdlab.text.embedding_ops import encode_with_overrides, mix  # noqa: E402

mixed = []
for w in (0.0, 0.5, 1.0):
    prompt = "a large red circle on a blue background"
    cond_mix = encode_with_overrides(pipe, prompt, {"circle": mix({"circle": 1 - w, "square": w})})
    mixed.append(pipe.generate(GenerationConfig(prompt, steps=args.steps, seed=4), cond=cond_mix).images[0])
show("07-circle-square-mix", mixed)

# %% 8. Loss guidance: pull the predicted image toward blue
from sdlab.guidance.loss import loss_guidance  # noqa: E402
from sdlab.guidance.losses import color_loss  # noqa: E402

plain = pipe.generate(GenerationConfig("a large red circle on a white background", steps=args.steps, seed=5))
bluer = pipe.generate(GenerationConfig("a large red circle on a white background", steps=args.steps, seed=5),
                      guidance=[loss_guidance(color_loss((0, 0, 255)), 3000.0)])
show("08-blue-loss-guidance", [plain.images[0], bluer.images[0]])

# %% 9. Cross-attention maps: which pixels each word looks at
from sdlab.attention.maps import attention_figure, token_labels  # noqa: E402
from sdlab.attention.store import attend  # noqa: E402

result, maps = attend(pipe, GenerationConfig(PROMPT, steps=args.steps, seed=6), places=("up",))
_, figure = attention_figure(result.images[0], maps[0], token_labels(c.tokenizer, PROMPT))
show("09-attention-maps", figure)

# %% 10. Prompt-to-prompt: swap the shape word, keep the layout
from sdlab.attention.edit import edit  # noqa: E402

edited = edit(pipe, "a large red circle on the left on a blue background",
              "a large red square on the left on a blue background", seed=7, steps=args.steps)
show("10-prompt-to-prompt", [edited.source_image, edited.target_image])
read_src, read_tgt = oracle.read(edited.source_image), oracle.read(edited.target_image)
facts["edit_oracle"] = {"source": [o.shape for o in read_src.objects], "target": [o.shape for o in read_tgt.objects]}

# %% summary
(OUT / "facts.json").write_text(json.dumps(facts, indent=1))
print(json.dumps(facts, indent=1))
