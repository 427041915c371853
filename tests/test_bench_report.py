"""benchmarks/report.py: RESULTS.md holds one current section per script and title; an
experiment's JSON result has one name."""

import json
import sys

from bench_util import BENCHMARKS, load_benchmark


def test_publish_replaces_the_section_of_the_same_script_and_title(tmp_path, monkeypatch, capsys):
    report = load_benchmark("report", monkeypatch)
    monkeypatch.setattr(report, "RESULTS", tmp_path / "RESULTS.md")
    (tmp_path / "RESULTS.md").write_text("# Results\n\nintro\n")
    report.publish("benchmarks/inference.py", "CPU · a", "| x |\n| 1 |", ["--fast"], record=True)
    report.publish("benchmarks/train_memory.py", "CPU · a", "| y |\n| 2 |", [], record=True)
    report.publish("benchmarks/inference.py", "GPU · a", "| x |\n| 3 |", [], record=True)
    report.publish("benchmarks/inference.py", "CPU · a", "| x |\n| 4 |", [], record=True)   # a newer run
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith("# Results\n\nintro\n\n### CPU · a\n\n`python benchmarks/inference.py` (measured ")
    assert text.count("### ") == 3 and "| 1 |" not in text
    assert [line for line in text.splitlines() if line.startswith("| ") and line != "| x |"] == \
        ["| 4 |", "| y |", "| 2 |", "| 3 |"]
    assert "python benchmarks/inference.py --fast" in capsys.readouterr().out
    assert report.result_file("benchmarks/p2p_eval.py") == BENCHMARKS / "results" / "p2p_eval.json"


def test_guidance_eval_results_go_to_the_experiments_one_file(tiny_model_dir, tmp_path, monkeypatch):
    guidance_eval = load_benchmark("guidance_eval", monkeypatch)
    monkeypatch.setattr(sys.modules["report"], "RESULTS_DIR", tmp_path)
    (tmp_path / "guidance_eval.json").write_text('{"color": {}}')          # an earlier run's result
    assert guidance_eval.main(["--model", str(tiny_model_dir), "--n", "1", "--steps", "1", "--only", "color",
                               "--color-scales", "10", "--results"]) == 0
    assert [f.name for f in tmp_path.iterdir()] == ["guidance_eval.json"]
    report = json.loads((tmp_path / "guidance_eval.json").read_text())
    assert report["color"]["prompts"] == "named" and set(report) == {"color"}
