"""The public Python API does what the CLI does: LoRA / embedding files, sizes, images from
latents or pixels, generation from given conditioning or starting latents."""

import numpy as np
import pytest
import torch

from sdlab import GenerationConfig, Pipeline
from sdlab.errors import ConfigError


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Pipeline.load(tiny_model_dir)


def _pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_load_lora_changes_the_image_is_recorded_and_removable(pipe, lora_file):
    config = GenerationConfig("a red circle", steps=2, seed=3)
    plain = pipe.generate(config).images[0]
    handle = pipe.load_lora(lora_file, 0.5)
    try:
        assert [r["scale"] for r in pipe.loras] == [0.5]
        lora = pipe.generate(config)
        assert np.abs(_pixels(lora.images[0]) - _pixels(plain)).max() > 0
        assert "Lora hashes: \"lora_kohya:" in lora.infotexts[0]
    finally:
        handle.remove()
    assert pipe.loras == []
    assert np.abs(_pixels(pipe.generate(config).images[0]) - _pixels(plain)).max() <= 1


def test_load_lora_refuses_a_bad_scale(pipe, lora_file):
    with pytest.raises(ConfigError, match=r"LoRA scale must be a number in \[-10, 10\], got 50"):
        pipe.load_lora(lora_file, 50)
    assert pipe.loras == []


def test_load_embedding_adds_the_token_and_renames(tiny_model_dir, tmp_path):
    from transformers import CLIPTextConfig

    from sdlab.text.embeddings import save_a1111

    pipe = Pipeline.load(tiny_model_dir)       # its own: the token stays in the tokenizer
    dim = CLIPTextConfig.from_pretrained(tiny_model_dir / "text_encoder").hidden_size
    emb = save_a1111(tmp_path / "my-shape.safetensors", "my-shape", torch.randn(2, dim) * 0.3)
    assert pipe.load_embedding(emb, token="<thing>") == ["<thing>"]
    assert [r["name"] for r in pipe.embeddings] == ["<thing>"]
    used = pipe.embeddings_used(GenerationConfig("a red <thing>"))
    assert [(r["name"], r["vectors"]) for r in used] == [("<thing>", 2)]
    plain = pipe.encode_prompt(["a red shape"])
    assert not torch.equal(pipe.encode_prompt(["a red <thing>"]), plain)
