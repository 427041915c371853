"""The deep-dive walkthrough runs end to end on the shipped model and saves its figures."""

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from sdlab.pipeline import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]


def test_walkthrough_runs_and_its_manual_loop_matches_the_library(tmp_path):
    out = tmp_path / "wt"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "walkthrough.py"), "--out", str(out), "--steps", "10"],
                          capture_output=True, text=True, timeout=900,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    facts = json.loads((out / "facts.json").read_text())
    assert facts["manual_vs_library_max_pixel_diff"] <= 1          # the hand-written loop is the library's
    assert facts["latent_shape"] == [4, 16, 16]
    assert facts["vae_shapes"] == {"pixels": [3, 64, 64], "latents": [4, 16, 16]} and facts["vae_fewer_numbers"] == 12
    img2img = facts["img2img_oracle"]                   # low strength keeps the input, high follows the prompt
    assert ["green", "square"] not in img2img["0.3"] and all(img2img.values())   # too little noise to redraw
    assert ["green", "square"] in img2img["0.6"] and ["green", "square"] in img2img["0.9"]
    assert facts["tokens"][:5] == ["<|startoftext|>", "a", "large", "red", "circle"]
    width = json.loads((DEFAULT_MODEL / "text_encoder" / "config.json").read_text())["hidden_size"]
    assert facts["embedding_shapes"]["cond"] == [1, 77, width]
    assert len(facts["figures"]) == 8
    for path in facts["figures"]:
        with Image.open(path) as im:
            assert im.width >= 128 and im.height >= 128
