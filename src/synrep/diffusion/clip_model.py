"""An open_clip model kept as a local-dir folder (the toy CLIP, a noised CLIP's base): what makes a
folder one, and loading it through open_clip alone. Below both CLIP guidance and the noised CLIP, which
each load such folders, so neither imports the other for it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# What makes a folder an open_clip local-dir model (open_clip.factory reads it)
CLIP_CONFIG = "open_clip_config.json"


def is_clip_folder(path: str | Path) -> bool:
    return (Path(path) / CLIP_CONFIG).exists()


def check_clip_folder(path: str | Path, key: str | None = None) -> Path:
    """``path`` as a Path when it is an open_clip local-dir folder; else one line naming the config
    key (when given) and the missing file."""
    folder = Path(path)
    if not is_clip_folder(folder):
        where = f"config key '{key}': " if key else ""
        raise FileNotFoundError(f"{where}{folder / CLIP_CONFIG} not found: not an open_clip local-dir model "
                                "(models/toy_clip, or `python -m synrep train_clip`)")
    return folder


def load_clip(path: str | Path, device: str | torch.device = "cpu", key: str | None = None):
    """(model in eval mode, tokenizer) of an open_clip local-dir folder, through open_clip alone."""
    import open_clip

    name = f"local-dir:{check_clip_folder(path, key)}"
    return open_clip.create_model(name, device=device).eval(), open_clip.get_tokenizer(name)
