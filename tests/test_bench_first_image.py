"""benchmarks/first_image.py reads a profiled child's stderr: phase markers (also those that
share a line with a progress bar's \\r output) and top-level `-X importtime` events, each
attributed to the phase it happened in."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "first_image.py"


def _bench():
    sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("first_image", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


STDERR = """import time:      100 |    2000000 | torch
import time:       10 |      10000 |   torch.nn
@@MARK load_start 1000.5
@@BEGIN load
import time:      100 |    3000000 | diffusers
@@END load
@@BEGIN generate
@@BEGIN encode
@@END encode
sampling:  96%|#########6| 24/25 [00:01<00:00]\rsampling: 100%|##########| 25/25 [00:01<00:00]@@BEGIN decode
@@END decode
@@END generate
import time:      100 |     500000 | PIL.PngImagePlugin
@@BEGIN save
@@END save
@@PHASES {"load": 4.0, "encode": 0.5, "decode": 0.25, "generate": 2.75, "save": 0.125}
@@MARK done 1008.0
"""


def test_phases_and_their_imports():
    rows = _bench().phases_of(STDERR, started=1000.0, total=9.0)
    assert rows["start-up and imports"] == (0.5, 2.0)          # the nested torch.nn is in torch's 2.0
    assert rows["model load"] == (4.0, 3.0)
    assert rows["text encoding"] == (0.5, 0.0) and rows["VAE decode"] == (0.25, 0.0)
    assert rows["sampling"] == (2.0, 0.0)                      # generate less encode and decode
    assert rows["PNG writing"] == (0.125, 0.0)
    assert rows["interpreter exit"] == (1.0, 0.0)
    assert rows["between the phases"][1] == 0.5                 # the PIL import between generate and save
    assert abs(sum(s for s, _ in rows.values()) - 9.0) < 1e-9
