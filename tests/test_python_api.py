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


def test_size_is_the_configs_or_the_native_one(pipe):
    n = pipe.native_size
    assert pipe.size(GenerationConfig("x")) == (n, n)
    assert pipe.size(GenerationConfig("x", width=32, height=16)) == (32, 16)


def test_sample_images_is_generate_for_the_same_seeds_and_takes_conditioning(pipe):
    config = GenerationConfig("a red circle", steps=3, seed=11, batch_size=2)
    generated = pipe.generate(config).images
    sampled = pipe.sample_images(config, [11, 12])
    assert [np.abs(_pixels(a) - _pixels(b)).max() for a, b in zip(sampled, generated)] == [0, 0]
    cond = pipe.encode_prompt(["a red circle"])
    again = pipe.sample_images(config, [12, 12], cond=torch.cat([cond, cond]))     # seeds may repeat
    assert [np.abs(_pixels(im) - _pixels(generated[1])).max() for im in again] == [0, 0]
    other = pipe.sample_images(config, [12], cond=pipe.encode_prompt(["a blue square"]))
    assert np.abs(_pixels(other[0]) - _pixels(generated[1])).max() > 0


def test_decode_images_and_to_images(pipe):
    config = GenerationConfig("a red circle", steps=2, seed=4, width=32, height=16)
    latents = pipe.sample_latents(config, [4], *pipe.size(config))
    images = pipe.decode_images(latents)
    assert images[0].size == (32, 16) and images[0].mode == "RGB"
    assert np.abs(_pixels(images[0]) - _pixels(pipe.generate(config).images[0])).max() == 0
    pixels = torch.tensor([[[[-1.0, 1.0]], [[0.0, 0.0]], [[1.0, -1.0]]]])      # (1, 3, 1, 2)
    assert _pixels(pipe.to_images(pixels)[0]).tolist() == [[[0, 128, 255], [255, 128, 0]]]
    from sdlab.errors import NonFiniteError

    with pytest.raises(NonFiniteError):
        pipe.to_images(torch.full((1, 3, 2, 2), float("nan")))


def test_guidance_presets_use_the_measured_scales_unless_given(pipe):
    from sdlab.guidance import DEFAULT_GUIDANCE_SCALES, guidance

    assert guidance() == []
    wraps = guidance(color=(0, 0, 255), clip="a blue circle")
    built = [w(lambda x, sigma, cond: x, pipe) for w in wraps]
    assert [b.scale for b in built] == [DEFAULT_GUIDANCE_SCALES["color"], DEFAULT_GUIDANCE_SCALES["clip"]]
    built = [w(lambda x, sigma, cond: x, pipe) for w in guidance(color=(0, 0, 255), scale=5.0, every=2)]
    assert (built[0].scale, built[0].every) == (5.0, 2)
    with pytest.raises(ConfigError, match="colour target values must be in 0..255"):
        guidance(color=(0, 0, 300))


def test_library_layers_below_the_pipeline_do_not_import_it():
    """attention/, io/, text/, sampling/ and guidance/ sit below pipeline.py: none imports it
    (attention.edit once did, through the private _to_pil: an import cycle)."""
    import ast
    from pathlib import Path

    import sdlab

    root = Path(sdlab.__file__).parent
    offenders = []
    for package in ("attention", "io", "text", "sampling", "guidance"):
        for path in (root / package).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "pipeline":
                    offenders.append(f"{package}/{path.name}:{node.lineno}")
    assert offenders == []


def test_readme_python_examples_name_what_exists():
    """Every import and every `pipe.NAME(...)` call in the README's Python blocks exists (the
    blocks sample for minutes, so they are not run here; the names are what goes stale)."""
    import importlib
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```python\n(.*?)```", readme, re.S))
    imports = re.findall(r"^from (sdlab[\w.]*) import (.+)$", blocks, re.M)
    assert len(imports) >= 5
    for module, names in imports:
        for name in names.split(","):
            assert hasattr(importlib.import_module(module), name.strip()), f"{module}.{name.strip()}"
    calls = set(re.findall(r"\bpipe\.(\w+)\(", blocks)) | set(re.findall(r"\bPipeline\.(\w+)\(", blocks))
    assert {"generate", "load_lora", "load_embedding", "sample_images", "decode_images", "size"} <= calls
    assert [c for c in calls if not hasattr(Pipeline, c)] == []
