"""Every bad input fails before any work, across the subcommands and the book: exit code 2, one line
``error: <problem>; fix: <fix>``, no traceback, nothing written, within a few seconds.

Values, task names (lm-eval's registry), output files and folders (``/proc`` defeats ``os.access``
for root, so a file is really created and removed), model folders (missing, corrupt or non-causal
config, missing or cut weights, no tokenizer), data (a bad JSON line, documents too short for the
windows) and the study, figures, demo and book commands. The work itself is replaced by a tripwire:
a case that reaches it fails. The task-name list is scanned once per lm-eval version (cached; a
cold scan takes seconds to tens of seconds here), so it is warmed before the cases are timed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import pytest
from _paths import DATA, ROOT
from _tinydir import tiny_model_dir

from dsnot_lite.cli import main

LIMIT_S = 5.0  # "within a few seconds", measured in process (the interpreter's start is not counted)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, Path]:
    """A good tiny model, broken copies of it, and data folders with a bad line or missing files."""
    root = tmp_path_factory.mktemp("fixtures")
    good = tiny_model_dir(root)
    made = {"good": good}
    for name, damage in {
        "no_config": lambda f: (f / "config.json").unlink(),
        "bad_config": lambda f: (f / "config.json").write_text("{not json"),
        "no_weights": lambda f: (f / "model.safetensors").unlink(),
        "cut_weights": lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-1000]),
        "not_causal": lambda f: (f / "config.json").write_text(json.dumps({"model_type": "t5", "is_encoder_decoder": True})),
        "no_tokenizer": lambda f: [p.unlink() for p in f.glob("tokenizer*")],
    }.items():
        shutil.copytree(good, root / name)
        damage(root / name)
        made[name] = root / name
    bad_data = root / "bad_data"
    shutil.copytree(DATA / "wikitext-2-raw-v1", bad_data / "wikitext-2-raw-v1")
    (bad_data / "c4").mkdir()
    lines = (DATA / "c4" / "c4_sample.jsonl").read_text().splitlines()
    lines[7] = lines[7][: len(lines[7]) // 2]  # a line cut in half
    (bad_data / "c4" / "c4_sample.jsonl").write_text("\n".join(lines) + "\n")
    made["bad_data"] = bad_data
    (root / "no_c4").mkdir()
    shutil.copytree(DATA / "wikitext-2-raw-v1", root / "no_c4" / "wikitext-2-raw-v1")
    made["no_c4"] = root / "no_c4"
    made["file"] = root / "a_file"
    made["file"].write_text("")
    made["garbage_table"] = root / "garbage.csv"
    made["garbage_table"].write_bytes(b'a,b\n1,2,3\n"never closed\n')
    from dsnot_lite.lm.zeroshot import task_names

    task_names()  # the one-time scan of lm-eval's task files (cached)
    return made


def _run_args(f, *extra: str) -> list[str]:
    base = ["run", "--model", str(f["good"]), "--method", "wanda", "--nsamples", "2", "--seqlen", "32", "--max-windows", "1",
            "--no-progress"]  # fmt: skip
    return [*base, *extra] if "--sparsity" in extra or "--nm" in extra else [*base, "--sparsity", "0.5", *extra]


# (case id, arguments from the fixtures, environment, pattern the one line must match)
CASES = [
    ("sparsity", lambda f: _run_args(f, "--sparsity", "1.5"), {}, r"sparsity 1.5 is outside"),
    ("nm", lambda f: _run_args(f, "--nm", "4:2"), {}, r"N:M needs 0 < N < M"),
    ("nsamples", lambda f: _run_args(f, "--nsamples", "0"), {}, r"nsamples must be >= 1"),
    ("seqlen", lambda f: _run_args(f, "--seqlen", "1"), {}, r"seqlen must be >= 2"),
    ("blocks", lambda f: _run_args(f, "--blocks", "0"), {}, r"blocks must be >= 1"),
    ("eps", lambda f: _run_args(f, "--dsnot", "--eps", "-1"), {}, r"eps must be a number >= 0"),
    ("task", lambda f: _run_args(f, "--tasks", "nonexistent_task"), {}, r"unknown zero-shot task 'nonexistent_task'"),
    ("task typo", lambda f: _run_args(f, "--tasks", "wikitext2_lastword,arc_easyy"), {}, r"did you mean 'arc_easy'"),
    ("output in /proc", lambda f: _run_args(f, "--output", "/proc/x.json"), {}, r"--output '/proc/x.json' cannot be written"),
    ("output is a folder", lambda f: _run_args(f, "--output", str(f["good"])), {}, r"--output .* is a folder"),
    ("output under a file", lambda f: _run_args(f, "--output", str(f["file"] / "x.json")), {}, r"cannot be written"),
    ("table in /proc", lambda f: _run_args(f, "--results-table", "/proc/t.csv"), {}, r"--results-table '/proc/t.csv' cannot"),
    ("save-model in /proc", lambda f: _run_args(f, "--save-model", "/proc/m"), {}, r"--save-model '/proc/m' cannot be written"),
    ("save-model exists", lambda f: _run_args(f, "--save-model", str(f["good"])), {}, r"already exists"),
    ("model missing", lambda f: _run_args(f, "--model", "/nonexistent/model"), {}, r"does not exist"),
    ("model no config", lambda f: _run_args(f, "--model", str(f["no_config"])), {}, r"has no config.json"),
    ("model bad config", lambda f: _run_args(f, "--model", str(f["bad_config"])), {}, r"config.json that is not valid JSON"),
    ("model not causal", lambda f: _run_args(f, "--model", str(f["not_causal"])), {}, r"'t5' model, which is not a causal"),
    ("model no weights", lambda f: _run_args(f, "--model", str(f["no_weights"])), {}, r"has no weights"),
    ("model cut weights", lambda f: _run_args(f, "--model", str(f["cut_weights"])), {}, r"cut short or corrupt"),
    ("model no tokenizer", lambda f: _run_args(f, "--model", str(f["no_tokenizer"])), {}, r"has no tokenizer"),
    ("data missing", lambda f: _run_args(f, "--data-dir", "/nonexistent/data"), {}, r"does not exist"),
    ("data lacks c4", lambda f: _run_args(f, "--data-dir", str(f["no_c4"])), {}, r"lacks c4/c4_sample.jsonl"),
    ("data bad line", lambda f: _run_args(f, "--data-dir", str(f["bad_data"])), {}, r"c4_sample.jsonl line 8 is not a JSON"),
    ("data env bad line", lambda f: _run_args(f), {"DSNOT_LITE_DATA": "bad_data"}, r"line 8 is not a JSON"),
    ("calibration too short", lambda f: _run_args(f, "--seqlen", "100000"), {}, r"seqlen 100000 is longer than any calibration"),
    ("study stage", lambda f: ["study", "nonexistent_stage", "--out", "study"], {}, r"unknown study stage"),
    ("study out in /proc", lambda f: ["study", "tune", "--out", "/proc/study"], {}, r"--out '/proc/study' cannot be written"),
    ("study model", lambda f: ["study", "tune", "--model", str(f["cut_weights"]), "--out", "study"], {}, r"cut short"),
    ("study data", lambda f: ["study", "tune", "--data-dir", str(f["bad_data"]), "--out", "study"], {}, r"line 8 is not"),
    ("figures table missing", lambda f: ["figures", "--table", "nope.csv", "--out", "figs"], {}, r"nope.csv does not exist"),
    ("figures table garbage", lambda f: ["figures", "--table", str(f["garbage_table"]), "--out", "figs"], {}, r"not a readable CSV"),
    ("figures out in /proc", lambda f: ["figures", "--out", "/proc/figs"], {}, r"--out '/proc/figs' cannot be written"),
    ("demo workspace", lambda f: ["demo"], {"DSNOT_LITE_WORKSPACE": "/proc/ws"}, r"results folder .* cannot be written.*DSNOT_LITE_WORKSPACE"),
    ("demo data", lambda f: ["demo"], {"DSNOT_LITE_DATA": "bad_data"}, r"line 8 is not a JSON"),
    ("book out in /proc", lambda f: ["book", "--out", "/proc/book"], {}, r"cannot write|cannot be written"),
]  # fmt: skip


def _book_main(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build = lambda *a, **k: pytest.fail("the book was built")
    return module.main(argv)


def _tripwires(monkeypatch) -> None:
    """Every entry to real work fails the test."""
    import dsnot_lite.lm.models as models
    import dsnot_lite.runs.cache as cache
    import dsnot_lite.runs.runner as runner
    import dsnot_lite.study.demo as demo
    import dsnot_lite.study.paper_figures as paper_figures

    stop = lambda what: lambda *a, **k: pytest.fail(f"{what} started before the bad input was caught")
    monkeypatch.setattr(models, "load_model", stop("loading the model"))
    monkeypatch.setattr(runner, "run", stop("the run"))
    monkeypatch.setattr(cache.RunCache, "run", stop("a study run"))
    monkeypatch.setattr(demo, "demo", stop("the demo"))
    monkeypatch.setattr(paper_figures, "write_all", stop("drawing the figures"))


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("case, argv, env, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_before_work(case, argv, env, pattern, fixtures, tmp_path, monkeypatch, capsys):
    import re

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("DSNOT_LITE_WORKSPACE", str(work / "workspace"))
    monkeypatch.delenv("DSNOT_LITE_DATA", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, str(fixtures[value]) if value in fixtures else value)
    _tripwires(monkeypatch)
    args = argv(fixtures)
    before = _files(work) | _files(fixtures["good"].parent)
    start = time.perf_counter()
    code = _book_main(args[1:]) if args[0] == "book" else main(args)
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    print(f"bad input {case}: exit {code} after {seconds:.3f} s")  # shown by pytest -rP: the time to each error
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "; fix: " in lines[0] and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]
    assert _files(work) | _files(fixtures["good"].parent) == before, "something was written"
    assert seconds < LIMIT_S, f"{case}: {seconds:.1f} s to the error"


class _AnyPath(dict):
    def __missing__(self, key: str) -> Path:
        return Path(key)


def test_there_are_at_least_25_cases_across_the_commands():
    commands = {argv(_AnyPath())[0] for _, argv, _, _ in CASES}
    assert len(CASES) >= 25 and commands == {"run", "study", "figures", "demo", "book"}
