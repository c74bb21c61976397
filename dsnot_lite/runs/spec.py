"""One run, fully specified: ``RunSpec``, its validation, its name and its cache key.

Every setting has one name, the same in code, on the command line (``--name``), in the run JSON,
in the results table and in file names. The spec is checked when it is built, before any model
is loaded; a bad value raises ``ValueError`` with the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from dsnot_lite.core.dsnot import DSnoTConfig, preset, preset_overrides
from dsnot_lite.core.exact import ExactConfig
from dsnot_lite.core.refit import PERCDAMP, PRECISIONS, TOLERANCE, solver

METHODS = ("dense", "magnitude", "wanda", "sparsegpt")
REFINERS = ("dsnot", "exact", "dsnot+exact")  # "dsnot+exact": DSnoT, then the exact refiner on its mask
PRESETS = ("official", "paper")
EVAL_SPLITS = ("test", "validation")
ATTENTION = ("sdpa", "eager")
DTYPES = ("float32", "float16", "bfloat16")
# Settings that change speed or where output goes, never the result: left out of the cache key.
SPEED_ONLY = ("eval_batch_size", "data_dir")
# Settings added after runs were stored, with the value that leaves those runs' keys unchanged.
KEY_NEUTRAL: dict[str, object] = {"refit": False, "refit_solver": None, "refit_target": "layer", "refit_damping": PERCDAMP,
                                   "refit_tolerance": TOLERANCE, "refit_precision": "float32"}  # fmt: skip
# What the re-fit fits (core.refit): the layer's own outputs on the inputs the pruned model feeds it,
# or the dense model's outputs (its weights on its own inputs: error compensation across blocks).
REFIT_TARGETS = ("layer", "dense")
REFIT_KNOBS = ("refit_target", "refit_damping", "refit_tolerance", "refit_precision")  # settings that need refit on
_UNSET = object()


@dataclass(frozen=True)
class RunSpec:
    """What to prune, how, on what calibration, and how to score it."""

    model: str = "smollm2-135m"
    method: str = "wanda"
    sparsity: float = 0.0  # fraction of each layer pruned; set from nm for N:M
    nm: tuple[int, int] | None = None
    refiner: str | None = None  # None, "dsnot", "exact" or "dsnot+exact"
    preset: str = "official"  # DSnoT preset
    dsnot: DSnoTConfig | None = None  # DSnoT knobs; None: the preset's
    exact: ExactConfig = field(default_factory=ExactConfig)
    weight_update: bool = True  # SparseGPT without a refiner: OBS weight update, or the saliency mask only
    refit: bool = False  # re-fit the kept weights of the final mask by least squares (core.refit), after any refiner
    refit_target: str = "layer"  # with refit: "layer" (its own outputs) or "dense" (the dense model's)
    refit_damping: float = PERCDAMP  # with refit: lambda as a fraction of the mean of diag G (SparseGPT's 0.01)
    refit_tolerance: float = TOLERANCE  # with refit: CG stops once an iteration gains less than this share of all gained
    refit_precision: str = "float32"  # with refit: the CG's matrix products in float32 or bf16 (faster with AMX or a GPU)
    nsamples: int = 32  # calibration windows (paper: 128)
    seqlen: int = 512  # tokens per calibration and evaluation window (paper: 2048)
    seed: int = 0  # calibration sampling seed
    max_windows: int | None = None  # evaluate only the first windows (quick run)
    eval_split: str = "test"  # WikiText-2 split scored
    blocks: int | None = None  # prune only the first k decoder blocks (None: all)
    attn: str = "sdpa"  # attention implementation (eager: the reference's numerics)
    device: str = "cpu"
    dtype: str | None = None  # None: float32 on CPU, float16 on CUDA (R11)
    batch_size: int = 8  # calibration windows per block forward
    record_errors: bool = False  # per-layer output errors before/after (needs each layer's Gram matrix)
    tasks: tuple[str, ...] = ()  # zero-shot tasks (lm-evaluation-harness)
    tasks_limit: int | None = None  # documents per zero-shot task (None: all)
    eval_batch_size: int = 4  # evaluation windows per forward (speed only)
    data_dir: str | None = None

    def __post_init__(self) -> None:
        _check(self)
        if self.nm is not None:
            object.__setattr__(self, "nm", tuple(self.nm))
            object.__setattr__(self, "sparsity", self.nm[0] / self.nm[1])
        object.__setattr__(self, "tasks", tuple(self.tasks))

    @property
    def refiners(self) -> tuple[str, ...]:
        """The refiners in the order they run: ``()``, ``("dsnot",)``, ``("exact",)`` or both."""
        return tuple(self.refiner.split("+")) if self.refiner else ()

    @property
    def dsnot_config(self) -> DSnoTConfig | None:
        """The DSnoT configuration in force (the preset with its overrides), or None without DSnoT."""
        if "dsnot" not in self.refiners:
            return None
        return self.dsnot or preset(self.preset)

    @property
    def exact_config(self) -> ExactConfig | None:
        return self.exact if "exact" in self.refiners else None

    @property
    def full_sparsegpt(self) -> bool:
        """SparseGPT with its OBS weight update (only without a refiner: refiners keep the weights, R8)."""
        return self.method == "sparsegpt" and not self.refiners and self.weight_update

    @property
    def needs_gram(self) -> bool:
        """Whether each layer's Gram matrix (SparseGPT's Hessian) must be accumulated."""
        return self.method == "sparsegpt" or "exact" in self.refiners or self.refit or self.record_errors

    def replace(self, **changes) -> RunSpec:
        return dataclasses.replace(self, **changes)

    def key(self) -> str:
        """A stable hash of everything that decides the result (it names the cached run).

        Stored runs stay valid as the code grows: a setting added later must be left out of the
        key while it has its neutral value (list it in ``KEY_NEUTRAL``), so old keys do not change.
        """
        fields = {k: v for k, v in self.result_fields().items() if KEY_NEUTRAL.get(k, _UNSET) != v}
        payload = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def result_fields(self) -> dict:
        """The settings that decide the result, as stored in the run JSON."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in SPEED_ONLY}
        fields["nm"] = format_nm(self.nm)
        fields["tasks"] = list(self.tasks)
        fields["dsnot"] = dataclasses.asdict(self.dsnot_config) if self.dsnot_config else None
        fields["exact"] = dataclasses.asdict(self.exact_config) if self.exact_config else None
        fields["preset"] = self.preset if self.dsnot_config else None
        fields["weight_update"] = self.full_sparsegpt
        fields["sparsity"] = 0.0 if self.method == "dense" else self.sparsity
        fields["refit_solver"] = (
            solver(self.refit_tolerance, self.refit_precision) if self.refit else None
        )  # a new solver: new keys, runs redone
        return fields

    def name(self) -> str:
        """``<model>-<method>[-<refiner...>][-<knobs>][-mask-only]-<s60|2_4>[-<eval>]``: file names, labels."""
        parts = [self.model.rstrip("/").split("/")[-1], self.method]
        if "dsnot" in self.refiners:
            parts.append(f"dsnot-{self.preset}")
            if self.dsnot is not None:
                parts += [knob_label(k, v) for k, v in preset_overrides(self.dsnot, self.preset).items()]
        if "exact" in self.refiners:
            parts.append("exact")
            parts += [knob_label(k, v) for k, v in exact_overrides(self.exact).items()]
        if self.method == "sparsegpt" and not self.refiners and not self.weight_update:
            parts.append("mask-only")
        parts += ["refit"] if self.refit else []
        parts += ["dense-target"] if self.refit_target == "dense" else []
        parts += [f"damp{self.refit_damping:g}"] if self.refit_damping != PERCDAMP else []
        parts += [f"tol{self.refit_tolerance:g}"] if self.refit_tolerance != TOLERANCE else []
        parts += [self.refit_precision] if self.refit_precision != "float32" else []
        if self.method != "dense":
            parts.append(f"{self.nm[0]}_{self.nm[1]}" if self.nm else f"s{round(self.sparsity * 100)}")
        parts += [f"seed{self.seed}"] if self.seed and self.method != "dense" else []
        parts += [f"blocks{self.blocks}"] if self.blocks else []
        parts += [self.eval_split] if self.eval_split != "test" else []
        parts += [self.attn] if self.attn != "sdpa" else []
        parts += ["+".join(self.tasks)] if self.tasks else []
        return "-".join(parts)

    def label(self) -> str:
        """Short human label: ``wanda + DSnoT (official)``, ``wanda + exact + refit``, ``dense``."""
        if self.method == "dense":
            return "dense"
        names = {"dsnot": f"DSnoT ({self.preset})", "exact": "exact"}
        text = " + ".join([self.method] + [names[r] for r in self.refiners])
        text += " (mask only)" if self.method == "sparsegpt" and not self.refiners and not self.weight_update else ""
        notes = (
            (["dense target"] if self.refit_target == "dense" else [])
            + ([f"damping {self.refit_damping:g}"] if self.refit_damping != PERCDAMP else [])
            + ([f"tolerance {self.refit_tolerance:g}"] if self.refit_tolerance != TOLERANCE else [])
            + ([f"{self.refit_precision} products"] if self.refit_precision != "float32" else [])
        )
        return text + (" + refit" if self.refit else "") + (f" ({', '.join(notes)})" if notes else "")


def format_nm(nm: tuple[int, int] | None) -> str | None:
    """``(2, 4)`` -> ``"2:4"`` (the form of the JSON, the table and ``--nm``)."""
    return f"{nm[0]}:{nm[1]}" if nm else None


def parse_nm(text: str | None) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``: N zeros in every block of M weights, 0 < N < M."""
    if text is None or text == "":
        return None
    parts = str(text).split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"nm {text!r} is not of the form N:M; fix: e.g. --nm 2:4")
    return int(parts[0]), int(parts[1])


def exact_overrides(config: ExactConfig) -> dict:
    """The fields where ``config`` differs from ``ExactConfig()``."""
    base = dataclasses.asdict(ExactConfig())
    return {k: v for k, v in dataclasses.asdict(config).items() if v != base[k]}


def knob_label(name: str, value) -> str:
    """``T=200`` -> ``T200``, ``sign_check=True`` -> ``sign_check-on`` (part of a run name)."""
    if isinstance(value, bool):
        shown = "on" if value else "off"
    elif isinstance(value, float):
        shown = f"{value:g}"
    else:
        shown = "all" if value is None else value
    return f"{name}{shown}" if name in ("T", "eps", "T_width") else f"{name}-{shown}"


def _check(spec: RunSpec) -> None:
    """Every rule a run's settings must satisfy, each with its fix."""
    choices = (("method", METHODS), ("preset", PRESETS), ("eval_split", EVAL_SPLITS), ("attn", ATTENTION),
               ("refit_precision", PRECISIONS))  # fmt: skip
    for name, allowed in choices:
        if getattr(spec, name) not in allowed:
            raise ValueError(f"{name} {getattr(spec, name)!r} is not one of {allowed}; fix: choose one of them")
    if spec.refiner is not None and spec.refiner not in REFINERS:
        raise ValueError(f"refiner {spec.refiner!r} is not one of {REFINERS}; fix: choose one of them or none")
    if spec.dtype is not None and spec.dtype not in DTYPES:
        raise ValueError(f"dtype {spec.dtype!r} is not one of {DTYPES}; fix: choose one of them")
    if spec.method == "dense" and spec.refit:
        raise ValueError("refit re-fits the kept weights of a pruned layer, but method is dense; fix: choose a pruning method "
                         "or drop --refit")  # fmt: skip
    if spec.refit_target not in REFIT_TARGETS:
        raise ValueError(f"refit_target {spec.refit_target!r} is not one of {REFIT_TARGETS}; fix: choose one of them")
    if not spec.refit and any(getattr(spec, name) != KEY_NEUTRAL[name] for name in REFIT_KNOBS):
        raise ValueError(f"{', '.join(REFIT_KNOBS)} set how the re-fit works, but refit is off; fix: add --refit")
    if not (isinstance(spec.refit_damping, (int, float)) and 0 < spec.refit_damping < float("inf")):
        raise ValueError(f"refit_damping must be a positive number, got {spec.refit_damping!r}; fix: e.g. --refit-damping 0.1")
    if not (isinstance(spec.refit_tolerance, (int, float)) and 0 < spec.refit_tolerance < 1):
        raise ValueError(f"refit_tolerance must be a number in (0, 1), got {spec.refit_tolerance!r}; "
                         "fix: e.g. --refit-tolerance 0.005")  # fmt: skip
    if spec.method == "dense" and spec.refiner:
        raise ValueError("a refiner improves a pruned mask, but method is dense; fix: choose a pruning method")
    if spec.nm is not None:
        n, m = spec.nm
        if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
            raise ValueError(f"N:M needs 0 < N < M, got {spec.nm}; fix: e.g. --nm 2:4")
    elif not 0.0 <= spec.sparsity < 1.0:
        raise ValueError(f"sparsity {spec.sparsity} is outside [0, 1); fix: e.g. --sparsity 0.6 for 60% zeros")
    if not spec.weight_update and (spec.method != "sparsegpt" or spec.refiner):
        raise ValueError("weight_update=False (--no-weight-update) only applies to sparsegpt without a refiner "
                         "(refiners never update weights); fix: drop it")  # fmt: skip
    if spec.dsnot is not None and "dsnot" not in spec.refiners:
        raise ValueError("DSnoT settings were given but the refiner does not include DSnoT; fix: add --refiner dsnot")
    for name in ("nsamples", "batch_size", "eval_batch_size"):
        if getattr(spec, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(spec, name)}; fix: pass a positive number")
    if spec.seqlen < 2:
        raise ValueError(f"seqlen must be >= 2, got {spec.seqlen}; fix: e.g. --seqlen 512")
    for name in ("max_windows", "blocks", "tasks_limit"):
        if getattr(spec, name) is not None and getattr(spec, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(spec, name)}; fix: pass a positive number or omit it")
    if not (spec.device == "cpu" or spec.device.startswith("cuda")):
        raise ValueError(f"device {spec.device!r} is not supported; fix: use cpu or cuda[:i]")
