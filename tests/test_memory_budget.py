"""Memory budget: size parsing, the ladder and planner (fake measurements), the CPU activation
accounting on the tiny model, the CLI flag and a smoke run of benchmarks/train_memory.py."""

import sys
from pathlib import Path

import pytest

from sdlab.errors import ConfigError
from sdlab.training import memory
from sdlab.training.config import TrainingConfig
from sdlab.training.methods.dreambooth import DreamBooth, DreamBoothOptions
from sdlab.training.methods.lora import LoRA, LoraOptions
from sdlab.training.methods.textual_inversion import TextualInversion, TIOptions

GIB = 2**30


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from sdlab.world.data import export_folder

    return export_folder(tmp_path_factory.mktemp("mem") / "data", 2, seed=3)


def _cfg(model, data, out, method="lora", options=None, **kw):
    base = dict(method=method, data_dir=str(data), output_dir=str(out), model=str(model), max_steps=2,
                device="cpu", options=options or LoraOptions(rank=2))
    base.update(kw)
    return TrainingConfig(**base)


@pytest.mark.parametrize("text,expected", [("6GiB", 6 * GIB), ("6gib", 6 * GIB), ("7.5G", int(7.5 * GIB)),
                                           ("512MiB", 512 * 2**20), ("512m", 512 * 2**20), ("8GB", 8 * 10**9),
                                           ("100 MB", 100 * 10**6), (" .5 g ", GIB // 2)])
def test_parse_size(text, expected):
    assert memory.parse_size(text) == expected


@pytest.mark.parametrize("text", ["6", "six GiB", "6 potatoes", "-1GiB", "", "0GiB", "6GiB extra", "1e3MB"])
def test_parse_size_rejects(text):
    with pytest.raises(ConfigError, match="memory size must be"):
        memory.parse_size(text)


def test_ladder_cuda_and_cpu(tmp_path):
    cfg = _cfg("m", tmp_path, tmp_path, batch_size=4)
    names = [r.name for r in memory.ladder(cfg, cuda=True, bf16=False, bnb=True)]
    assert names == ["fp16, sdpa attention, batch 4",
                     "fp16, sdpa attention, gradient checkpointing, batch 4",
                     "fp16, sdpa attention, gradient checkpointing, 8-bit Adam, batch 4",
                     "fp16, sdpa attention, gradient checkpointing, 8-bit Adam, batch 1 x 4 accumulation",
                     "fp16, sliced attention, gradient checkpointing, 8-bit Adam, batch 1 x 4 accumulation"]
    cpu = memory.ladder(_cfg("m", tmp_path, tmp_path, gradient_checkpointing=True), cuda=False)
    assert [r.overrides for r in cpu] == [{"attention": "sdpa"}, {"attention": "sdpa", "mixed_precision": "bf16"},
                                          {"attention": "sliced", "mixed_precision": "bf16"}]
    assert memory.ladder(cfg, cuda=True, bf16=True, bnb=False)[0].overrides["mixed_precision"] == "bf16"


def test_planner_picks_the_fastest_rung_that_fits(tmp_path):
    cfg = _cfg("m", tmp_path, tmp_path)
    seen = []

    def fake(c, method):        # 10 GiB, less 3 GiB for checkpointing, less 2 GiB for 8-bit Adam
        seen.append(c)
        return (10 - 3 * c.gradient_checkpointing - 2 * c.use_8bit_adam) * GIB

    rungs = memory.ladder(cfg, cuda=True, bf16=True, bnb=True)
    plan = memory.plan_for_budget(cfg, LoRA(), 6 * GIB, measure=fake, rungs=rungs)
    assert plan.config.gradient_checkpointing and plan.config.use_8bit_adam and plan.config.attention == "sdpa"
    assert plan.peak_bytes == 5 * GIB and len(seen) == 3 and plan.config.mixed_precision == "bf16"
    text = plan.explain()
    assert "8-bit Adam" in text and "5.00 GiB" in text and "10.00 GiB" in text and "\n" not in text
    fast = memory.plan_for_budget(cfg, LoRA(), 20 * GIB, measure=fake, rungs=rungs)
    assert fast.rung is rungs[0] and "fastest" in fast.explain()


def test_planner_names_the_smallest_peak_when_nothing_fits(tmp_path):
    cfg = _cfg("m", tmp_path, tmp_path)
    with pytest.raises(ConfigError, match=r"nothing fits the memory budget of 1.00 GiB: the smallest peak is 3.00 GiB"):
        memory.plan_for_budget(cfg, LoRA(), GIB, measure=lambda c, m: (4 - c.gradient_checkpointing) * GIB)


def test_activation_accounting_on_the_tiny_model(tiny_model_dir, data, tmp_path):
    """Saved-tensor accounting: checkpointing keeps less, a larger image keeps more, for each method."""
    methods = [("lora", lambda: LoRA(LoraOptions(rank=2)), LoraOptions(rank=2)),
               ("textual-inversion", lambda: TextualInversion(TIOptions()), TIOptions()),
               ("dreambooth", lambda: DreamBooth(), DreamBoothOptions(prior_preservation=False))]
    for name, make, opts in methods:
        act = {}
        for res in (16, 32):
            for gc in (False, True):
                cfg = _cfg(tiny_model_dir, data, tmp_path / name, name, opts, resolution=res, gradient_checkpointing=gc)
                m = memory.account_step(cfg, make())
                act[res, gc] = m.breakdown.activations
                assert m.kind == "CPU accounting" and m.peak_bytes > m.breakdown.weights > 0
        assert act[16, True] < act[16, False] and act[32, True] < act[32, False], (name, act)
        assert act[32, False] > act[16, False] and act[32, True] > act[16, True], (name, act)


def test_estimate_tracks_the_accounting_on_the_tiny_model(tiny_model_dir, data, tmp_path):
    cfg = _cfg(tiny_model_dir, data, tmp_path, resolution=32)
    est = memory.estimate_step(cfg, LoRA(LoraOptions(rank=2)))
    acc = memory.account_step(cfg, LoRA(LoraOptions(rank=2)))
    assert est.breakdown.trainable_params == acc.breakdown.trainable_params
    assert 0.5 < est.peak_bytes / acc.peak_bytes < 2


def test_conv_adapters_are_estimated_like_the_whole_unet(tiny_model_dir, data, tmp_path):
    """LoRA on the resnet convolutions keeps their inputs for backward, as DreamBooth does."""
    acts = {}
    for targets in ("attention", "all"):
        opts = LoraOptions(rank=2, targets=targets)
        cfg = _cfg(tiny_model_dir, data, tmp_path / targets, options=opts, resolution=32)
        est, acc = memory.estimate_step(cfg, LoRA(opts)), memory.account_step(cfg, LoRA(opts))
        acts[targets] = est.breakdown.activations, acc.breakdown.activations
        assert est.breakdown.trainable_params == acc.breakdown.trainable_params, targets
    assert acts["all"][1] > acts["attention"][1] and acts["all"][0] > acts["attention"][0]


def test_cli_memory_budget(tiny_model_dir, data, tmp_path, capsys):
    from sdlab.cli.main import main

    base = ["train", "lora", "--data", str(data), "--model", str(tiny_model_dir), "--device", "cpu",
            "--output-dir", str(tmp_path / "run"), "--max-steps", "1", "--rank", "2", "--resolution", "16"]
    assert main(base + ["--memory-budget", "6 potatoes"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "memory size must be a number with a unit" in err
    assert main(base + ["--memory-budget", "64KiB"]) == 2
    assert "nothing fits the memory budget of 64.0 KiB: the smallest peak is" in capsys.readouterr().err
    assert main(base + ["--memory-budget", "1GiB"]) == 0
    err = capsys.readouterr().err
    assert "sdlab train: memory budget 1.00 GiB: fp32, sdpa attention, batch 1" in err and "CPU accounting" in err


def test_benchmark_smoke(tiny_model_dir, monkeypatch, capsys):
    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench_dir))
    sys.modules.pop("train_memory", None)
    import train_memory

    assert train_memory.main(["--device", "cpu", "--size", "32", "--model", str(tiny_model_dir), "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "| method | options | peak | target |" in out and "CPU accounting" in out and "NOT GPU memory" in out
    assert sum(line.startswith("|") for line in out.splitlines()) == 2 + 5    # header, rule, 5 runs
