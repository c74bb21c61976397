"""Static snapshots of ipywidgets for the book: the saved widget state rendered as plain HTML.

An executed notebook keeps every widget's state (``metadata.widgets``, written by nbclient): the
controls' values, the HTML text, the PNG bytes of an ``Image``, the outputs of an ``Output``. The
book shows each displayed widget as it stood when the notebook finished: controls drawn disabled
with their values, images and text as they were. No JavaScript and no widget manager, so a page
needs nothing from the network; a caption says how to make the widget live.
"""

from __future__ import annotations

import html
from collections.abc import Callable

STATE_MIME = "application/vnd.jupyter.widget-state+json"
VIEW_MIME = "application/vnd.jupyter.widget-view+json"
LIVE_NOTE = (
    "Static snapshot of an interactive widget, as it stood when this page was built: its controls do nothing here. "
    "To use it, open the notebook in JupyterLab or Colab and run it (see the top of this page)."
)


def widget_states(nb) -> dict[str, dict]:
    """model id -> ``{"model_name": ..., "state": ..., "buffers": [...]}`` from ``nb.metadata.widgets``."""
    return dict(nb.metadata.get("widgets", {}).get(STATE_MIME, {}).get("state", {}))


def _buffer(model: dict, name: str) -> str | None:
    """The base64 text of the binary attribute ``name`` (e.g. an Image's ``value``)."""
    for buf in model.get("buffers", []):
        if buf.get("path") == [name] and buf.get("encoding", "base64") == "base64":
            return buf.get("data")
    return None


def _fmt(value, spec: str | None) -> str:
    """A slider's readout as the widget formats it (``readout_format``, a Python format spec)."""
    if isinstance(value, (list, tuple)):
        return " – ".join(_fmt(v, spec) for v in value)
    try:
        return format(value, spec or "")
    except (TypeError, ValueError):
        return str(value)


def _label(state: dict) -> str:
    desc = state.get("description") or ""
    if not desc:
        return ""
    text = desc if state.get("description_allow_html") else html.escape(desc)
    return f"<span class='book-w-label'>{text}</span>"


def _children(state: dict, render: Callable[[str], str]) -> list[str]:
    return [render(ref.removeprefix("IPY_MODEL_")) for ref in state.get("children", [])]


def _box(state: dict, render, direction: str) -> str:
    kids = "".join(_children(state, render))
    return f"<div class='book-w-box book-w-{direction}'>{kids}</div>"


def _tabs(state: dict, render) -> str:
    titles = state.get("titles") or []
    parts = []
    for i, child in enumerate(_children(state, render)):
        title = html.escape(str(titles[i])) if i < len(titles) and titles[i] else f"tab {i + 1}"
        parts.append(f"<div class='book-w-tab'><div class='book-w-tab-title'>{title}</div>{child}</div>")
    return f"<div class='book-w-box book-w-column'>{''.join(parts)}</div>"


def _slider(state: dict) -> str:
    value = state.get("value")
    if "_options_labels" in state:  # SelectionSlider: the value is an index into the labels
        labels = state["_options_labels"]
        idx = state.get("index")
        readout = ", ".join(labels[i] for i in idx) if isinstance(idx, list) else (labels[idx] if idx is not None else "")
        lo, hi, pos = 0, max(len(labels) - 1, 1), idx if isinstance(idx, int) else 0
    else:
        readout = _fmt(value, state.get("readout_format"))
        lo, hi = state.get("min", 0), state.get("max", 100)
        pos = value[0] if isinstance(value, list) else value
    if state.get("_model_name") == "FloatLogSliderModel":
        readout = _fmt(value, state.get("readout_format") or ".3g")
        pos = lo  # the bar position of a log slider is its exponent; the readout carries the value
    rng = f"<input type='range' disabled min='{lo}' max='{hi}' step='any' value='{pos}'>"
    return f"<div class='book-w-control'>{_label(state)}{rng}<span class='book-w-readout'>{html.escape(readout)}</span></div>"


def _select(state: dict) -> str:
    labels = state.get("_options_labels", [])
    idx = state.get("index")
    chosen = set(idx) if isinstance(idx, list) else {idx}
    opts = "".join(
        f"<option{' selected' if i in chosen else ''}>{html.escape(str(lab))}</option>" for i, lab in enumerate(labels)
    )
    multiple = " multiple" if isinstance(idx, list) else ""
    return f"<div class='book-w-control'>{_label(state)}<select disabled{multiple}>{opts}</select></div>"


def _toggles(state: dict) -> str:
    labels = state.get("_options_labels", [])
    buttons = "".join(
        f"<button disabled class='{'book-w-on' if i == state.get('index') else ''}'>{html.escape(str(lab))}</button>"
        for i, lab in enumerate(labels)
    )
    return f"<div class='book-w-control'>{_label(state)}{buttons}</div>"


def _check(state: dict) -> str:
    checked = " checked" if state.get("value") else ""
    return f"<div class='book-w-control'><input type='checkbox' disabled{checked}>{_label(state)}</div>"


def _text(state: dict) -> str:
    value = html.escape(str(state.get("value", "")))
    return f"<div class='book-w-control'>{_label(state)}<input type='text' disabled value='{value}'></div>"


def _image(state: dict, model: dict) -> str:
    data = _buffer(model, "value")
    if not data:
        return "<div class='book-w-missing'>(the image was not saved)</div>"
    fmt = html.escape(state.get("format") or "png")
    mime = "image/svg+xml" if fmt == "svg+xml" else f"image/{fmt}"
    width = f" width='{html.escape(str(state['width']))}'" if state.get("width") else ""
    return f"<img class='book-w-image' alt='widget image' src='data:{mime};base64,{data}'{width}>"


def render_outputs(outputs: list[dict]) -> str:
    """Jupyter outputs (of an ``Output`` widget) as HTML: images, HTML, then text."""
    parts = []
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream":
            parts.append(f"<pre>{html.escape(''.join(out.get('text', '')))}</pre>")
        elif kind == "error":
            parts.append(
                f"<pre class='book-w-error'>{html.escape(out.get('ename', ''))}: {html.escape(out.get('evalue', ''))}</pre>"
            )
        elif kind in ("display_data", "execute_result"):
            data = out.get("data", {})
            for mime in ("image/png", "image/jpeg"):
                if mime in data:
                    parts.append(f"<img alt='output image' src='data:{mime};base64,{''.join(data[mime]).strip()}'>")
                    break
            else:
                if "image/svg+xml" in data:
                    parts.append("".join(data["image/svg+xml"]))
                elif "text/html" in data:
                    parts.append("".join(data["text/html"]))
                elif "text/markdown" in data:
                    parts.append(f"<pre>{html.escape(''.join(data['text/markdown']))}</pre>")
                elif "text/plain" in data:
                    parts.append(f"<pre>{html.escape(''.join(data['text/plain']))}</pre>")
    return "".join(parts)


BOXES = {"VBoxModel": "column", "BoxModel": "column", "GridBoxModel": "row", "HBoxModel": "row"}
SLIDERS = {"IntSliderModel", "FloatSliderModel", "FloatLogSliderModel", "IntRangeSliderModel", "FloatRangeSliderModel",
           "SelectionSliderModel", "SelectionRangeSliderModel"}  # fmt: skip
SELECTS = {"DropdownModel", "SelectModel", "SelectMultipleModel", "RadioButtonsModel"}
CONTROLS = {"ToggleButtonsModel", "CheckboxModel", "ToggleButtonModel", "ButtonModel", "PlayModel"}
TEXTS = {"TextModel", "TextareaModel", "IntTextModel", "FloatTextModel", "BoundedIntTextModel", "BoundedFloatTextModel",
         "PasswordModel", "ComboboxModel", "DatePickerModel", "ColorPickerModel"}  # fmt: skip


def snapshot(model_id: str, states: dict[str, dict]) -> str:
    """The widget ``model_id`` and its children as static HTML (unknown kinds: their name and value);
    the note on how to make it live only where it has controls (not under a progress bar)."""
    seen: set[str] = set()
    controls: list[str] = []

    def render(mid: str) -> str:
        model = states.get(mid)
        if model is None or mid in seen:
            return "<div class='book-w-missing'>(widget state not saved)</div>"
        seen.add(mid)
        state = model.get("state", {})
        name = state.get("_model_name") or model.get("model_name", "")
        if (
            state.get("layout")
            and states.get(str(state["layout"]).removeprefix("IPY_MODEL_"), {}).get("state", {}).get("display") == "none"
        ):
            return ""
        if name in SLIDERS | SELECTS | TEXTS | CONTROLS:
            controls.append(name)
        if name in BOXES:
            return _box(state, render, BOXES[name])
        if name in ("TabModel", "AccordionModel", "StackModel"):
            return _tabs(state, render)
        if name in SLIDERS:
            return _slider(state)
        if name in SELECTS:
            return _select(state)
        if name == "ToggleButtonsModel":
            return _toggles(state)
        if name in ("CheckboxModel", "ToggleButtonModel", "ValidModel"):
            return _check(state)
        if name in TEXTS:
            return _text(state)
        if name in ("HTMLModel", "HTMLMathModel"):
            return f"<div class='book-w-html'>{_label(state)}{state.get('value', '')}</div>"
        if name == "LabelModel":
            return f"<div class='book-w-html'>{html.escape(str(state.get('value', '')))}</div>"
        if name == "ImageModel":
            return _image(state, model)
        if name == "OutputModel":
            return f"<div class='book-w-output'>{render_outputs(state.get('outputs', []))}</div>"
        if name == "ButtonModel":
            return f"<button disabled>{html.escape(state.get('description', ''))}</button>"
        if name in ("IntProgressModel", "FloatProgressModel"):
            return f"<div class='book-w-control'>{_label(state)}<progress value='{state.get('value', 0)}' max='{state.get('max', 100)}'></progress></div>"
        value = html.escape(str(state.get("value", "")))
        return f"<div class='book-w-control'>{_label(state)}<code>{html.escape(name)}</code> {value}</div>"

    body = render(model_id)
    note = f"<div class='book-widget-note'>{html.escape(LIVE_NOTE)}</div>" if controls else ""
    return f"<div class='book-widget'>{body}{note}</div>"


def snapshot_outputs(nb) -> int:
    """Replace every widget view in ``nb``'s outputs by its static snapshot (``text/html``); drop the
    saved state (the snapshots carry what it showed). Returns how many widgets were rendered."""
    states = widget_states(nb)
    count = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(VIEW_MIME)
            if view is None:
                continue
            out["data"] = {"text/html": snapshot(view.get("model_id", ""), states)}
            count += 1
    nb.metadata.pop("widgets", None)
    return count
