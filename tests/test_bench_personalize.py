"""The personalization benchmark runs end to end (tiny random model, a few steps): every method,
LoRA and DreamBooth with a prior over world captions, the per-colour probes and a re-read."""

import json
import runpy
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "personalize.py"


def _run(argv, monkeypatch):
    import torch

    threads = torch.get_num_threads()      # the script pins one thread; the rest of the suite needs its own
    monkeypatch.setattr(sys, "argv", [str(BENCH), *argv])
    try:
        runpy.run_path(str(BENCH), run_name="__main__")
    finally:
        torch.set_num_threads(threads)


def test_personalize_benchmark_smoke(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    common = ["--model", str(tiny_model_dir), "--out", str(out), "--steps", "2", "--n", "2"]
    _run([*common, "--only", "ti,lora,db", "--lora-prior", "--class-prompts", "world", "--class-images", "3",
          "--all-colours"], monkeypatch)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in rows] == ["ti", "lora", "db"]
    for r in rows:
        assert 0 <= r["detection"] <= 1 and 0 <= r["palette_color+concept"] <= r["palette_color"] <= 1
    assert "drift_same_seed_agreement" in rows[2]
    captions = [json.loads(line)["text"] for line in (out / "class-world" / "metadata.jsonl").read_text().splitlines()]
    assert len(captions) == 3 and len(set(captions)) == 3           # one world caption per class image
    _run([*common, "--reread", str(out / "lora" / "lora_kohya.safetensors")], monkeypatch)
    last = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    assert last["method"] == "reread" and last["artifact"].endswith("lora_kohya.safetensors")


def test_personalize_benchmark_finetune_smoke(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "bench"
    _run(["--model", str(tiny_model_dir), "--out", str(out), "--steps", "2", "--n", "2", "--only", "ft",
          "--ft-images", "4", "--snr-gamma", "5", "--ema-decay", "0.9"], monkeypatch)
    row = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    assert row["method"] == "ft" and row["n"] == 2
    assert 0 <= row["all_attributes"] <= row["striped"] <= 1 and 0 <= row["plain_prompt_striped"] <= 1
    _run(["--model", str(tiny_model_dir), "--out", str(out), "--n", "2", "--reread-fill", str(out / "ft" / "model"),
          "--fill-seed", "20000"], monkeypatch)
    row = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    assert row["method"] == "reread-fill" and row["fill_seed"] == 20000 and row["n"] == 2


def test_personalize_defaults_benchmark_runs_its_commands(tmp_path, monkeypatch):
    """benchmarks/personalize_defaults.py (the README's commands with the defaults) end to end on the
    shipped model, one training step and one sample per prompt: DreamBooth without the prior."""
    import json

    bench = BENCH.with_name("personalize_defaults.py")
    monkeypatch.syspath_prepend(str(bench.parent))              # its `from report import ...`
    monkeypatch.setattr(sys, "argv", [str(bench), "--out", str(tmp_path / "pd"), "--only", "dreambooth, no prior",
                                      "--n", "1", "--train-flag=--max-steps=1"])
    runpy.run_path(str(bench), run_name="__main__")
    report = json.loads((tmp_path / "pd" / "dreambooth-no-prior" / "eval-defaults" / "report.json").read_text())
    assert 0 <= report[-1]["detection"] <= 1 and "drift_accuracy_drop" in report[-1]
