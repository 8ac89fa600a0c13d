"""The main job end to end, shortened: every artefact the README promises is written."""

import json

import pytest

from ponder.commands.quickstart import QuickstartConfig, quickstart


@pytest.mark.slow
def test_quickstart_writes_summary_report_and_model(tmp_path):
    out = tmp_path / "qs"
    summary = quickstart(QuickstartConfig(out=str(out), steps=2, prompts_per_step=4, group_size=4,
                                          eval_problems=6, eval_samples=2, max_new_tokens=96, progress=False))
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["before"] == summary["before"]
    for side in ("before", "after"):
        assert 0.0 <= on_disk[side]["accuracy"] <= 1.0
        assert on_disk[side]["mean_thinking_tokens"] >= 0
    assert on_disk["wall_seconds"] > 0
    assert (out / "report" / "index.html").is_file()
    assert (tmp_path / "qs" / "rl" / "model" / "model.safetensors").is_file()
    assert on_disk["model_dir"].endswith("model") and on_disk["report"].endswith("index.html")
