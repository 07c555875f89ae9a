"""The crash harness (bench/chaos.py) in a short profile: SIGKILL at random moments."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

CHAOS = Path(__file__).resolve().parent.parent / "bench" / "chaos.py"


@pytest.mark.slow
def test_random_kills_lose_and_duplicate_nothing(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Twelve runs, half of them killed with SIGKILL at a random point, files landing in
    between (with malformed rows): afterwards every good row is in the append dataset
    exactly once, every key in the merge dataset, every bad row in the rejected dataset
    exactly once, and no run is left running."""
    spec = importlib.util.spec_from_file_location("hw_chaos", CHAOS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["hw_chaos"] = module
    spec.loader.exec_module(module)
    code = module.main(["--runs", "12", "--rows", "40", "--seed", "3", "--dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert 0 == code, printed
    assert '"ok": true' in printed
