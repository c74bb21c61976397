"""A dsnot_lite process that stops at a chosen point so a test can ``kill -9`` it there.

    python tests/_killable.py POINT MARKER run ARGS...          # the command line, paused at POINT
    python tests/_killable.py POINT MARKER sweep FOLDER MODEL   # a study worker over ``sweep_specs``

POINT: ``prune:N`` (the Nth layer the process prunes), ``model`` (the model folder half-written: weights in
its temporary folder, no tokenizer, not renamed), ``json`` / ``csv`` (half the bytes of the first
such file written to its temporary file), ``row`` (a sweep between a run's JSON and its table row),
or ``none``. On reaching it the process creates MARKER and sleeps; the test kills it. A sweep
worker appends the key of every run it completes to ``FOLDER/done-<pid>.txt``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _pause(marker: str) -> None:
    Path(marker).write_text("paused")
    time.sleep(600)


def sweep_specs(model: str):
    """Four quick runs of the tiny model: what a study stage is, in miniature."""
    from dsnot_lite.runs.spec import RunSpec

    base = RunSpec(model=model, method="wanda", sparsity=0.5, nsamples=2, seqlen=32, max_windows=1, batch_size=2)
    return [base, base.replace(refiner="dsnot"), base.replace(sparsity=0.6), base.replace(method="magnitude")]


def install(point: str, marker: str) -> None:
    import dsnot_lite.runs.io as io
    import dsnot_lite.runs.pipeline as pipeline

    if point.startswith("prune:"):
        real, calls, stop_at = pipeline.prune_layer, [], int(point.split(":")[1])

        def prune_layer(*args, **kwargs):
            calls.append(1)
            if len(calls) == stop_at:
                _pause(marker)
            return real(*args, **kwargs)

        pipeline.prune_layer = prune_layer
    elif point in ("json", "csv"):
        real_write = io._write

        def half(path, fh, data):
            if path.suffix == f".{point}":
                fh.write(data[: len(data) // 2])
                fh.flush()
                _pause(marker)
            real_write(path, fh, data)

        io._write = half
    elif point == "model":
        import transformers

        real = transformers.PreTrainedTokenizerBase.save_pretrained

        def save_pretrained(self, *args, **kwargs):
            _pause(marker)
            return real(self, *args, **kwargs)

        transformers.PreTrainedTokenizerBase.save_pretrained = save_pretrained
    elif point == "row":
        real_append = io.append_rows

        def append_rows(*args, **kwargs):
            _pause(marker)
            return real_append(*args, **kwargs)

        import dsnot_lite.runs.cache as cache

        cache.append_rows = append_rows


def sweep(folder: str, model: str) -> None:
    """A study worker: ``RunCache.run`` over the specs in order, as ``Study.run`` does."""
    import os

    from dsnot_lite.runs.cache import RunCache

    cache = RunCache(folder, progress=False)
    for spec in sweep_specs(model):
        before = cache.computed
        result = cache.run(spec)
        if cache.computed > before:
            with open(Path(folder) / f"done-{os.getpid()}.txt", "a") as fh:
                fh.write(result["key"] + "\n")


if __name__ == "__main__":
    point, marker, command, *rest = sys.argv[1:]
    if point != "none":
        install(point, marker)
    if command == "sweep":
        sweep(*rest)
    else:
        from dsnot_lite.cli import main

        sys.exit(main([command, *rest]))
