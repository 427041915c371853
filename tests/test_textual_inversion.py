"""Textual inversion: only the new rows move; the files load in sdlab and in plain diffusers."""

import pytest
import torch
from safetensors.torch import load_file

from sdlab.errors import ConfigError, ModelLoadError
from sdlab.text import embeddings
from sdlab.training.config import TrainingConfig
from sdlab.training.loop import train
from sdlab.training.methods.textual_inversion import TextualInversion, TIOptions


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    from sdlab.world.data import export_folder

    root = tmp_path_factory.mktemp("ti")
    data = export_folder(root / "data", 4, seed=2)
    (data / "metadata.jsonl").unlink()
    method = TextualInversion(TIOptions(placeholder="<my-shape>", initializer="red circle", num_vectors=3))
    cfg = TrainingConfig(method="textual-inversion", data_dir=str(data), output_dir=str(root / "out"),
                         model=str(tiny_model_dir), instance_prompt="unused", max_steps=3, learning_rate=0.05,
                         adam_weight_decay=0.5, checkpoint_every=100, device="cpu", options=method.options)
    events = []
    result = train(cfg, method, callback=events.append)
    return method, result, root / "out", events


def test_only_new_rows_change(trained, tiny_model_dir):
    from transformers import CLIPTextModel

    method, result, _, events = trained
    before = CLIPTextModel.from_pretrained(tiny_model_dir / "text_encoder").get_input_embeddings().weight
    after = method.c.text_encoder.get_input_embeddings().weight.detach()
    n_old = before.shape[0]
    assert after.shape[0] == n_old + 3 and method.ids == list(range(n_old, n_old + 3))
    assert torch.equal(after[:n_old], before)                        # every other row bit-identical
    init = before[method.c.tokenizer("red circle", add_special_tokens=False).input_ids]
    start = init[torch.tensor([0, 1, 0])]                              # initializer words, cycled
    assert (after[n_old:] - start).abs().amax(dim=1).min() > 1e-4     # each new row moved
    assert [e.step for e in events] == [0, 1, 2] and all(e.metrics["loss"] > 0 for e in events)


def test_saved_layouts_load_in_sdlab_and_agree(trained, tiny_model_dir, tmp_path):
    from sdlab.pipeline import Pipeline

    method, _, out, _ = trained
    learned = method.learned()
    d = load_file(str(out / "learned_embeds.safetensors"))
    a = load_file(str(out / "my-shape.safetensors"))
    assert torch.equal(d["<my-shape>"], learned) and torch.equal(a["emb_params"], learned)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": learned}, "name": "my-shape", "step": 3},
               tmp_path / "a1111.pt")
    encodings = []
    for path, token in ((out / "learned_embeds.safetensors", None), (out / "my-shape.safetensors", "<my-shape>"),
                        (tmp_path / "a1111.pt", "<my-shape>")):
        pipe = Pipeline.load(tiny_model_dir, device="cpu")
        plain = pipe.encode_prompt(["a <my-shape> on a blue background"])
        assert embeddings.load_embedding(pipe, path, token=token) == ["<my-shape>"]
        assert embeddings.expand_prompt("a <my-shape>", pipe.c.tokenizer) == "a <my-shape> <my-shape>_1 <my-shape>_2"
        encodings.append(pipe.encode_prompt(["a <my-shape> on a blue background"]))
        assert not torch.allclose(encodings[-1], plain)
    assert torch.equal(encodings[0], encodings[1]) and torch.equal(encodings[0], encodings[2])
    # the embedding rows sdlab loaded are exactly the trained ones
    ids = pipe.c.tokenizer.convert_tokens_to_ids(embeddings.token_names("<my-shape>", 3))
    assert torch.equal(pipe.c.text_encoder.get_input_embeddings().weight[ids].detach(), learned)


def test_plain_diffusers_loads_the_saved_file(trained, tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    method, _, out, _ = trained
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    pipe.load_textual_inversion(str(out / "learned_embeds.safetensors"))
    ids = pipe.tokenizer.convert_tokens_to_ids(["<my-shape>", "<my-shape>_1", "<my-shape>_2"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids].detach(), method.learned())
    assert pipe.maybe_convert_prompt("a <my-shape>", pipe.tokenizer) == "a <my-shape> <my-shape>_1 <my-shape>_2"


def test_bad_files_and_options(tmp_path, tiny_model_dir):
    from sdlab.pipeline import Pipeline

    torch.save({"x": [1, 2]}, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError, match="not a textual-inversion embedding"):
        embeddings.read_embedding(tmp_path / "bad.pt")
    pipe = Pipeline.load(tiny_model_dir, device="cpu")
    torch.save({"<t>": torch.zeros(2, 7)}, tmp_path / "wrongdim.bin")
    with pytest.raises(ConfigError, match="dimension 7"):
        embeddings.load_embedding(pipe, tmp_path / "wrongdim.bin")
    with pytest.raises(ConfigError, match="already exists"):
        embeddings.add_tokens(pipe.c.tokenizer, pipe.c.text_encoder, ["circle"], torch.zeros(1, 32))
    with pytest.raises(ConfigError, match="num_vectors"):
        TIOptions(num_vectors=0)


def test_max_norm_clips_only_the_new_vectors(tiny_model_dir, tmp_path):
    from sdlab.world.data import export_folder

    data = export_folder(tmp_path / "data", 2, seed=3)
    method = TextualInversion(TIOptions(placeholder="<c>", initializer="circle", num_vectors=2, templates="object",
                                        max_norm=0.05))
    cfg = TrainingConfig(method="textual-inversion", data_dir=str(data), output_dir=str(tmp_path / "out"),
                         model=str(tiny_model_dir), instance_prompt="unused", max_steps=2, learning_rate=0.5,
                         checkpoint_every=100, device="cpu", options=method.options)
    train(cfg, method)
    weight = method.c.text_encoder.get_input_embeddings().weight.detach()
    assert torch.allclose(weight[method.ids].norm(dim=-1), torch.full((2,), 0.05), atol=1e-5)
    from sdlab.pipeline import Pipeline

    original = Pipeline.load(tiny_model_dir, device="cpu").c.text_encoder.get_input_embeddings().weight
    assert torch.equal(weight[: method.ids[0]], original.detach())          # every other row as it was
    assert torch.equal(method.learned(), weight[method.ids])                  # the table holds the trained rows
    with pytest.raises(ConfigError, match="max_norm"):
        TIOptions(max_norm=0.0)
