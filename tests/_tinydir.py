"""A tiny LLaMA saved as a Hugging Face folder (with the tiny tokenizer), so code that loads a
model by name or path (``explore.ModelLab``, ``explore.bundled_layer``) runs in seconds."""

from __future__ import annotations

from pathlib import Path

from _tiny import tiny_model, tiny_tokenizer


def tiny_model_dir(root: Path, arch: str = "llama") -> Path:
    folder = root / f"tiny-{arch}"
    if not (folder / "config.json").is_file():
        model = tiny_model(arch)
        model.config.use_cache = False
        model.save_pretrained(folder)
        tiny_tokenizer().save_pretrained(folder)
    return folder
