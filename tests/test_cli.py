"""The run command: bad input fails in one line with exit code 2 and writes nothing; a tiny run works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from _paths import ROOT
from _tiny import tiny_model, tiny_tokenizer

from dsnot_lite.cli import main


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _run(argv, tmp_path, capsys):
    out = tmp_path / "out.json"
    table = tmp_path / "table.csv"
    code = main(["run", *argv, "--output", str(out), "--results-table", str(table), "--no-progress"])
    err = capsys.readouterr().err
    return code, err, out, table


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "wanda", "--sparsity", "1.0"], r"sparsity 1.0 is outside \[0, 1\)"),
        (["--method", "wanda", "--sparsity", "-0.1"], r"sparsity -0.1 is outside \[0, 1\)"),
        (["--method", "wanda", "--nm", "4:2"], r"N:M needs 0 < N < M"),
        (["--method", "wanda", "--nm", "x"], r"nm 'x' is not of the form N:M"),
        (["--method", "wanda", "--nm", "2:4:8"], r"not of the form N:M"),
        (["--method", "wanda", "--nm", "2:4", "--sparsity", "0.6"], r"contradicts --nm"),
        (["--method", "wanda"], r"needs --sparsity or --nm"),
        (["--method", "dense", "--dsnot"], r"a refiner improves a pruned mask, but method is dense"),
        (["--method", "obs", "--sparsity", "0.5"], r"invalid choice: 'obs'.*python -m dsnot_lite run --help"),
        (
            ["--method", "wanda", "--sparsity", "0.5", "--data-dir", "/nonexistent/data"],
            r"data folder '/nonexistent/data' \(from --data-dir\) does not exist",
        ),
        (["--method", "wanda", "--sparsity", "0.5", "--max-windows", "0"], r"max_windows must be >= 1"),
        (["--method", "wanda", "--sparsity", "0.5", "--device", "tpu"], r"device 'tpu' is not supported"),
        (
            ["--method", "wanda", "--sparsity", "0.5", "--no-weight-update"],
            r"weight_update=False \(--no-weight-update\) only applies",
        ),
        (["--model", "/nonexistent/model", "--method", "wanda", "--sparsity", "0.5", "--no-table"], r"does not exist"),
        (
            ["--method", "wanda", "--sparsity", "0.5", "--T", "100", "--grow", "wanda"],
            r"DSnoT options \(--grow\) given without --refiner dsnot",
        ),
        (["--method", "wanda", "--sparsity", "0.5", "--T", "100"], r"--T sets the refiners' swaps per row, but no refiner"),
        (["--method", "wanda", "--sparsity", "0.5", "--dsnot", "--eps", "-1"], r"eps must be a number >= 0"),
        (["--method", "wanda", "--sparsity", "0.5", "--dsnot", "--prune", "random"], r"invalid choice: 'random'"),
        (["--method", "wanda", "--sparsity", "0.5", "--shortlist", "8"], r"--shortlist is an option of the exact refiner"),
        (["--method", "wanda", "--sparsity", "0.5", "--refiner", "exact", "--shortlist", "x"], r"--shortlist 'x' must be"),
        (["--method", "wanda", "--sparsity", "0.5", "--refiner", "exact", "--dsnot"], r"--dsnot means --refiner dsnot"),
        (
            ["--method", "wanda", "--sparsity", "0.5", "--bogus"],
            r"unrecognized arguments: --bogus; fix: see `python -m dsnot_lite run --help`",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_files(argv, message, tmp_path, capsys):
    import re

    code, err, _out, _table = _run(argv, tmp_path, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "fix" in lines[0], err
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no partial output


def test_refiner_knobs_override_the_preset_and_name_the_output():
    from dsnot_lite.cli import build_parser, run_spec
    from dsnot_lite.core.dsnot import preset

    argv = ["run", "--method", "wanda", "--sparsity", "0.6", "--dsnot", "--preset", "paper",
            "--T", "200", "--eps", "0.01", "--grow", "wanda", "--sign-check", "off", "--var-power", "2",
            "--var-floor", "0.1", "--T-width", "4096"]  # fmt: skip
    spec = run_spec(build_parser().parse_args(argv))
    want = dict(T=200, eps=0.01, grow="wanda", sign_check=False, var_power=2.0, var_floor=0.1, T_width=4096)
    got = spec.dsnot_config
    assert {k: getattr(got, k) for k in want} == want
    assert (got.prune, got.statistics, got.layers) == (preset("paper").prune, "true", "all")  # the rest: the preset's
    assert (
        spec.name()
        == "smollm2-135m-wanda-dsnot-paper-T200-eps0.01-var_power-2-var_floor-0.1-sign_check-off-grow-wanda-T_width4096-s60"
    )
    plain = run_spec(build_parser().parse_args(argv[:8]))
    assert plain.dsnot is None and plain.name() == "smollm2-135m-wanda-dsnot-paper-s60"
    exact = run_spec(build_parser().parse_args(["run", "--method", "magnitude", "--nm", "2:4", "--refiner", "dsnot+exact",
                                                "--T", "20", "--shortlist", "all"]))  # fmt: skip
    assert exact.exact_config.T == exact.dsnot_config.T == 20 and exact.exact_config.shortlist is None
    assert exact.name() == "smollm2-135m-magnitude-dsnot-official-T20-exact-T20-shortlist-all-2_4"


def test_unrecognised_option_names_the_command(capsys):
    assert main(["--bogus"]) == 2
    assert "fix: see `python -m dsnot_lite --help`" in capsys.readouterr().err
    assert main(["figures", "--bogus"]) == 2
    assert "`python -m dsnot_lite figures --help`" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--output", "--save-model", "--results-table"])
def test_unwritable_outputs_fail_before_any_model_is_loaded(flag, tmp_path, capsys, monkeypatch):
    import dsnot_lite.lm.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    target = str(locked / ("out" if flag == "--save-model" else "out.json"))
    args = ["run", "--method", "wanda", "--sparsity", "0.5", flag, target]
    if flag != "--output":
        args += ["--output", str(tmp_path / "ok.json")]
    try:
        if os.geteuid() == 0:  # root writes anywhere: use a path under a regular file instead
            (tmp_path / "file").write_text("")
            args[args.index(flag) + 1] = str(tmp_path / "file" / "out")
        assert main(args) == 2
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err
    assert "cannot be written" in err and flag in err


def test_process_exit_code_and_stderr(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dsnot_lite", "run", "--method", "wanda", "--nm", "4:2", "--output", str(tmp_path / "o.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.json").exists()


def test_tiny_run_writes_json_table_and_model(tiny_folder, tmp_path, capsys):
    base = ["--model", str(tiny_folder), "--method", "wanda", "--dsnot", "--sparsity", "0.5",
            "--nsamples", "4", "--seqlen", "32", "--max-windows", "3", "--batch-size", "2"]  # fmt: skip
    code, err, out, table = _run([*base, "--save-model", str(tmp_path / "saved")], tmp_path, capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    for key in ("model", "method", "refiner", "preset", "dsnot", "sparsity", "nm", "ppl", "seqlen", "windows",
                "max_windows", "nsamples", "seed", "seconds", "peak_memory_mb", "layers", "window_nll", "key", "name"):  # fmt: skip
        assert key in result, key
    assert (result["method"], result["refiner"], result["preset"], result["sparsity"], result["nm"]) == (
        "wanda",
        "dsnot",
        "official",
        0.5,
        None,
    )
    assert result["dsnot"]["T"] == 50 and result["exact"] is None and len(result["window_nll"]) == 3
    assert (result["windows"], result["max_windows"], result["nsamples"], result["seqlen"]) == (3, 3, 4, 32)
    assert result["full_eval"] is False and result["total_windows"] > 3
    assert {"load_model", "calibration_data", "statistics", "prune", "refine", "eval", "total"} <= set(result["seconds"])
    assert len(result["layers"]) == 14 and result["peak_memory_mb"] > 0
    # The saved folder loads, carries the pruned weights, and gives the same perplexity.
    from transformers import AutoModelForCausalLM

    from dsnot_lite.lm.data import wikitext_rows
    from dsnot_lite.lm.evaluation import perplexity, tokenize_test_text

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    q = saved.model.layers[0].self_attn.q_proj.weight
    assert float((q == 0).float().mean()) == pytest.approx(result["layers"][0]["sparsity"])
    ids = tokenize_test_text(tiny_tokenizer(), wikitext_rows("test"))
    again = perplexity(saved, ids, seqlen=32, max_windows=3, progress=False)
    assert again.ppl == pytest.approx(result["ppl"], rel=1e-5)
    # A second run appends a second row to the table, which pandas reads.
    code, err, _, _ = _run(["--model", str(tiny_folder), "--method", "magnitude", "--nm", "2:4",
                            "--nsamples", "2", "--seqlen", "32", "--max-windows", "2"], tmp_path, capsys)  # fmt: skip
    assert code == 0, err
    df = pd.read_csv(table)
    assert list(df["method"]) == ["wanda", "magnitude"]
    assert list(df["nm"].fillna("")) == ["", "2:4"]
    assert df["ppl"].notna().all() and (df["max_windows"] == [3, 2]).all()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        "out.json", "saved", "table.csv",
    ]  # fmt: skip
    assert torch.isfinite(torch.tensor(df["ppl"].tolist())).all()
    # every output is an ordinary file (0644 under the usual umask), not a 0600 temp file
    for path in (out, table, tmp_path / "saved" / "config.json", tmp_path / "saved" / "model.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~_umask(), path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
