"""The base-model recipe end to end with tiny time budgets: stages, resume, assembly."""

import json

import numpy as np

from sdlab import GenerationConfig, Pipeline
from sdlab.world.base_model import train_model
from sdlab.world.checkpoint import load_state


def test_train_model_smoke_and_resume(tmp_path):
    run, out = tmp_path / "run", tmp_path / "model"
    kw = dict(vae_minutes=0.01, decoder_minutes=0.01, clip_minutes=0.01, cache_size=64, log=lambda *_: None)
    train_model(run, out, unet_minutes=0.01, clip_out=tmp_path / "clip", **kw)
    first = load_state(run / "unet")
    assert first["step"] >= 1 and first["scaling_factor"] > 0
    for stage in ("vae", "vae_decoder", "clip", "unet"):
        assert not list(run.glob(f"{stage}.tmp")), "temp checkpoint folder left behind"
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert (out / "tokenizer" / "vocab.json").exists() and (out / "tokenizer" / "merges.txt").exists()

    # Resume: a larger budget continues from the saved step instead of starting again.
    train_model(run, out, unet_minutes=first["seconds"] / 60 + 0.01, **kw)
    second = load_state(run / "unet")
    assert second["step"] > first["step"] and second["seconds"] > first["seconds"]

    pipe = Pipeline.load(out)
    image = pipe.generate(GenerationConfig("a red circle", steps=2, seed=0)).images[0]
    assert image.size == (64, 64) and np.asarray(image).std() > 0

    # Continue from a shipped-style model folder in a new run folder (a new machine).
    again = tmp_path / "run2"
    budgets = json.loads((out / "training_state.json").read_text())
    assert budgets["unet"]["step"] == second["step"]
    train_model(again, tmp_path / "model2", unet_minutes=second["seconds"] / 60 + 0.01, init_from=out,
                init_clip=tmp_path / "clip", **kw)
    third = load_state(again / "unet")
    assert third["step"] > second["step"] and third["scaling_factor"] == second["scaling_factor"]
    assert not (again / "vae.tmp").exists() and load_state(again / "vae")["step"] == load_state(run / "vae")["step"]
