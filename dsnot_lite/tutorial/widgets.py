"""ipywidgets 8 front-ends for the notebooks. Callbacks are thin: they read the controls, call a
cached ``study.layer_lab`` / ``study.model_lab`` function and draw with ``study.layer_plots``.

The plot is shown in an ``ipywidgets.Image`` holding PNG bytes (rendered by JupyterLab without
any extra front-end code, and inspectable from Python), next to an ``HTML`` summary line. Each
explorer keeps its latest ``result`` and ``figure`` so tests (and curious readers) can check
what a click did without a browser:

>>> ex = LayerExplorer(synthetic_layer())          # doctest: +SKIP
>>> ex.controls["T"].value = 5                      # doctest: +SKIP
>>> ex.result.params.T, ex.result.summary["swaps"]  # doctest: +SKIP
"""

from __future__ import annotations

import html
from collections import OrderedDict

import ipywidgets as W

from dsnot_lite.core.dsnot import GROW_CRITERIA, PRESETS, PRUNE_CRITERIA
from dsnot_lite.plots import layer_plots
from dsnot_lite.plots.style import figure_png
from dsnot_lite.runs import model_lab
from dsnot_lite.tutorial import layer_lab
from dsnot_lite.tutorial.layer_lab import LAYER_METHODS, LAYER_REFINERS, LayerParams
from dsnot_lite.tutorial.layers import Layer

# Dropdown values are strings: ipywidgets 8 shows an option whose value is None as "no selection".
SIGN_CHECK_OPTIONS = {"preset default": None, "on": True, "off": False}
NM_OPTIONS = {"unstructured": None, "2:4": (2, 4), "4:8": (4, 8)}


def _key(mapping: dict, value) -> str:
    return next(k for k, v in mapping.items() if v == value)


DRAWN_CACHE_SIZE = 32  # dashboards an explorer keeps (figure and PNG)
_STYLE = {"description_width": "110px"}
_LAYOUT = W.Layout(width="330px")


def _slider(cls, description, **kw):
    return cls(description=description, continuous_update=False, style=_STYLE, layout=_LAYOUT, **kw)


def _dropdown(description, options, value):
    return W.Dropdown(description=description, options=options, value=value, style=_STYLE, layout=_LAYOUT)


class LayerExplorer:
    """Controls for ``layer_lab.run_layer`` on one layer and a live ``layer_plots.layer_dashboard``.

    Controls (``self.controls``): refiner, sparsity, T, epsilon, grow criterion, prune criterion,
    sign check, preset, initial method, N:M and the row to follow. Every change re-runs (cached)
    and redraws; ``self.result`` is the latest ``LayerRun``, ``self.figure`` the latest figure and
    ``self.image.value`` its PNG bytes. ``self.widget`` is the box to display.
    """

    def __init__(self, layer: Layer, params: LayerParams | None = None, row: int | None = None):
        p = params or LayerParams()
        self.layer = layer
        rows_out = layer.weight.shape[0]
        self.controls = {
            "sparsity": _slider(W.FloatSlider, "sparsity", value=p.sparsity, min=0.1, max=0.9, step=0.05, readout_format=".0%"),
            "T": _slider(W.IntSlider, "T (max swaps)", value=p.T, min=0, max=100, step=1),
            "eps": _slider(
                W.FloatLogSlider, "ε (threshold)", value=p.eps, base=10, min=-3, max=2, step=0.25, readout_format=".3g"
            ),
            "grow": _dropdown("grow criterion", list(GROW_CRITERIA), p.grow),
            "prune": _dropdown("prune criterion", list(PRUNE_CRITERIA), p.prune),
            "sign_check": _dropdown("sign check", list(SIGN_CHECK_OPTIONS), _key(SIGN_CHECK_OPTIONS, p.sign_check)),
            "preset": _dropdown("preset", list(PRESETS), p.preset),
            "method": _dropdown("initial mask", list(LAYER_METHODS), p.method),
            "refiner": _dropdown("refiner", list(LAYER_REFINERS), p.refiner),
            "nm": _dropdown("N:M", list(NM_OPTIONS), _key(NM_OPTIONS, tuple(p.nm) if p.nm else None)),
            "row": _slider(W.IntSlider, "row to follow", value=0, min=0, max=rows_out - 1, step=1),
        }
        self.status = W.HTML(layout=W.Layout(width="100%"))
        self.image = W.Image(format="png", layout=W.Layout(width="100%", max_width="1100px"))
        self.result: layer_lab.LayerRun | None = None
        self.figure = None
        self.updates = 0
        self._holding = False
        self._drawn: OrderedDict = OrderedDict()  # (params, row) -> (figure, PNG): a revisit redraws nothing
        c = self.controls
        left = W.VBox([c["sparsity"], c["T"], c["eps"], c["row"]])
        middle = W.VBox([c["grow"], c["prune"], c["sign_check"]])
        right = W.VBox([c["refiner"], c["preset"], c["method"], c["nm"]])
        title = W.HTML(f"<b>Mask refinement on {html.escape(layer.description or layer.name)}</b>")
        self.widget = W.VBox([title, W.HBox([left, middle, right]), self.status, self.image])
        self.widget.add_class("dsnot-layer-explorer")
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        first = self._run()
        self._holding = True  # choose the starting row without drawing twice
        c["row"].value = row if row is not None else layer_lab.rows_by_initial_error(first, 1)[0]
        self._holding = False
        self.update()

    # -- thin callbacks -------------------------------------------------------------------
    def params(self) -> LayerParams:
        c = self.controls
        nm = NM_OPTIONS[c["nm"].value]
        return LayerParams(
            sparsity=round(float(c["sparsity"].value), 4) if nm is None else nm[0] / nm[1],
            T=int(c["T"].value),
            eps=float(c["eps"].value),
            grow=c["grow"].value,
            prune=c["prune"].value,
            sign_check=SIGN_CHECK_OPTIONS[c["sign_check"].value],
            preset=c["preset"].value,
            method=c["method"].value,
            refiner=c["refiner"].value,
            nm=nm,
        )

    def _run(self) -> layer_lab.LayerRun:
        return layer_lab.run_layer(self.layer, self.params())

    def _on_change(self, _change=None) -> None:
        if not self._holding:
            self.update()

    def update(self) -> None:
        """Re-run (cached) with the current controls and redraw."""
        try:
            run = self._run()
        except ValueError as exc:  # e.g. a criterion the preset cannot combine: say so, keep the last plot
            self.status.value = f"<span style='color:#D55E00'>cannot run this setting: {html.escape(str(exc))}</span>"
            return
        row = int(self.controls["row"].value)
        key = (run.params, row)
        if key not in self._drawn:
            figure = layer_plots.layer_dashboard(run, row=row, fixed_layout=True)
            self._drawn[key] = (figure, figure_png(figure, dpi=80))
            while len(self._drawn) > DRAWN_CACHE_SIZE:
                self._drawn.popitem(last=False)
        self._drawn.move_to_end(key)
        self.figure, self.image.value = self._drawn[key]
        self.result = run
        self.updates += 1
        s = run.summary
        self.status.value = (
            f"mean |E[Δ]| <b>{s['mean_abs_error_before']:.3g} → {s['mean_abs_error_after']:.3g}</b> · "
            f"relative output error {s['rel_output_error_before']:.4f} → <b>{s['rel_output_error_after']:.4f}</b>"
            + (
                f" (held out {s['heldout_rel_error_before']:.4f} → {s['heldout_rel_error_after']:.4f})"
                if s["heldout_rel_error_after"] is not None
                else ""
            )
            + f" · {s['flips']} flips in {s['rows_changed']} rows · sparsity {s['sparsity_after']:.4f}"
            f" · row {row}: E[Δ] {float(run.expected_error_before[row]):.3g} → {float(run.expected_error_after[row]):.3g},"
            f" output error {float(run.output_error_before[row]):.3g} → {float(run.output_error_after[row]):.3g}"
        )

    def set(self, **values) -> None:
        """Set several controls at once with a single redraw, e.g. ``set(T=10, eps=0.5)``."""
        self._holding = True
        try:
            for name, value in values.items():
                self.controls[name].value = value
        finally:
            self._holding = False
        self.update()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


class SweepExplorer:
    """Pick what to vary (a sweep, or the grow x prune criterion grid) and what to plot.

    ``sweeps`` maps an axis name to ``(function() -> DataFrame, x column, plot options)``;
    the functions are the cached lab helpers, so revisiting an axis is instant.
    ``metrics`` maps a DataFrame column to its axis label.
    """

    def __init__(self, sweeps: dict, metrics: dict, title: str = "", grid=None):
        self.sweeps = sweeps
        self.metrics = metrics
        self.grid = grid  # optional function(metric) -> DataFrame (prune x grow)
        axes = list(sweeps) + (["grow x prune criteria"] if grid else [])
        self.controls = {
            "axis": W.ToggleButtons(options=axes, value=axes[0], description="vary", style={"button_width": "auto"}),
            "metric": _dropdown("plot", [(label, col) for col, label in metrics.items()], next(iter(metrics))),
        }
        self.image = W.Image(format="png", layout=W.Layout(width="100%", max_width="900px"))
        self.table = W.HTML()
        self.figure = None
        self.frame = None
        self.updates = 0
        self.widget = W.VBox([W.HTML(f"<b>{html.escape(title)}</b>"), self.controls["axis"], self.controls["metric"],
                              self.image, self.table])  # fmt: skip
        self.widget.add_class("dsnot-sweep-explorer")
        for control in self.controls.values():
            control.observe(lambda _c: self.update(), names="value")
        self.update()

    def update(self) -> None:
        axis, metric = self.controls["axis"].value, self.controls["metric"].value
        label = self.metrics[metric]
        if axis == "grow x prune criteria":
            self.frame = self.grid(metric)
            self.figure = layer_plots.criterion_heatmap(self.frame, title=f"{label}: grow x prune criteria", label=label)
        else:
            fn, x, opts = self.sweeps[axis]
            self.frame = fn()
            self.figure = layer_plots.sweep_plot(self.frame, x, {metric: label}, title=f"{label} vs {axis}", **opts)
            self.figure.axes[0].set_ylabel(label)
        self.image.value = figure_png(self.figure, dpi=80)
        self.table.value = self.frame.to_html(float_format=lambda v: f"{v:.4g}", max_cols=12, border=0)
        self.updates += 1

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def layer_sweeps(layer: Layer, params: LayerParams | None = None, fast: bool = False) -> SweepExplorer:
    """A ``SweepExplorer`` over T, epsilon, sparsity, power and floor of the variance, N:M and the
    refiner on one layer."""
    base = params or LayerParams()
    values = {
        "T": [0, 1, 2, 5, 10, 20, 50] + ([] if fast else [100]),
        "eps": [0.01, 0.1, 1.0, 10.0] if fast else [0.001, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
        "sparsity": [0.5, 0.6, 0.7, 0.8],
        "var_power": [0.0, 0.5, 1.0, 2.0],
        "var_floor": [0.0, 0.01, 0.1, 1.0],
        "nm": [None, (2, 4), (4, 8)],
        "refiner": list(LAYER_REFINERS),
    }
    xlabels = {"T": "T (max swaps per row)", "eps": "ε (stop threshold)", "sparsity": "sparsity (fraction pruned)",
               "var_power": "power of Var(A) in Eq. 2", "var_floor": "Var floor in Eq. 2 (x median Var)",
               "nm": "sparsity pattern", "refiner": "refiner"}  # fmt: skip
    sweeps = {
        name: ((lambda n=name, v=vals: layer_lab.sweep(layer, n, v, base)), name,
               {"logx": name in ("eps", "var_floor"), "xlabel": xlabels[name]})
        for name, vals in values.items()
    }  # fmt: skip
    metrics = {
        "rel_output_error_after": "relative output error after refinement (calibration)",
        "heldout_rel_error_after": "relative output error after refinement (held out)",
        "mean_abs_error_after": "mean |E[Δ_r]| after refinement",
        "flips": "mask entries flipped (count)",
    }
    if layer.heldout_gram is None:
        metrics.pop("heldout_rel_error_after")
    return SweepExplorer(
        sweeps, metrics, title=f"Ablations on {layer.description or layer.name}",
        grid=lambda metric: layer_lab.criterion_grid(layer, metric, params=base),
    )  # fmt: skip


def lab_sweeps(lab: model_lab.ModelLab, sparsities=(0.5, 0.6, 0.7), refiner: str = "dsnot") -> SweepExplorer:
    """A ``SweepExplorer`` over whole-model runs (perplexity), served from the lab's cache."""
    sweeps = {
        "sparsity": ((lambda: model_lab.lab_sweep(lab, "sparsity", sparsities, refiner=refiner)), "sparsity",
                     {"xlabel": "sparsity (fraction pruned)"}),
    }  # fmt: skip
    if refiner == "dsnot":
        sweeps["preset"] = ((lambda: model_lab.lab_sweep(lab, "preset", list(PRESETS))), "preset", {"xlabel": "DSnoT preset"})
    metrics = {"ppl_refined": f"perplexity, Wanda + {refiner}", "ppl_initial": "perplexity, Wanda",
               "delta_ppl": f"{refiner} - Wanda (perplexity)"}  # fmt: skip
    return SweepExplorer(sweeps, metrics, title=f"Whole model: {lab.label}")
