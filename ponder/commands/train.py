"""`ponder train RECIPE`: RL (`ponder.rl.train`), or SFT when the recipe says `kind = "sft"`."""

from __future__ import annotations

from pathlib import Path

from ponder.core import config as C
from ponder.core.config import ConfigError


def main(argv: list[str]) -> int:
    recipe = next((a for a in argv if a.endswith(".toml") and Path(a).is_file()), None)
    kind = C.load_toml(recipe).get("kind", "rl") if recipe else "rl"
    if kind not in ("rl", "sft"):
        raise ConfigError(f"recipe {recipe!r}: kind = {kind!r} is not valid for `ponder train`; choose one of: rl, sft")
    if kind == "sft":
        from ponder.stages.sft import main as sft_main
        return sft_main(argv)
    from ponder.rl.train import main as rl_main
    return rl_main(argv)
