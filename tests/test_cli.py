"""The run command: bad input fails in one line with exit code 2 and writes nothing; a tiny run works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from _tiny import tiny_model, tiny_tokenizer

from dsnot_lite.cli import main, parse_nm

from _paths import ROOT


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
        (["--method", "wanda", "--sparsity", "1.0"], r"--sparsity 1.0 is outside \[0, 1\)"),
        (["--method", "wanda", "--sparsity", "-0.1"], r"--sparsity -0.1 is outside \[0, 1\)"),
        (["--method", "wanda", "--nm", "4:2"], r"--nm '4:2' needs 0 < N < M"),
        (["--method", "wanda", "--nm", "x"], r"--nm 'x' is not of the form N:M"),
        (["--method", "wanda", "--nm", "2:4:8"], r"not of the form N:M"),
        (["--method", "wanda", "--nm", "2:4", "--sparsity", "0.6"], r"contradicts --nm"),
        (["--method", "wanda"], r"needs --sparsity or --nm"),
        (["--method", "dense", "--dsnot"], r"--dsnot refines a pruned mask"),
        (["--method", "obs", "--sparsity", "0.5"], r"invalid choice: 'obs'"),
        (["--method", "wanda", "--sparsity", "0.5", "--data-dir", "/nonexistent/data"], r"data folder '/nonexistent/data' \(from --data-dir\) does not exist"),
        (["--method", "wanda", "--sparsity", "0.5", "--max-windows", "0"], r"--max-windows must be >= 1"),
        (["--method", "wanda", "--sparsity", "0.5", "--device", "tpu"], r"--device 'tpu' is not supported"),
        (["--method", "wanda", "--sparsity", "0.5", "--no-weight-update"], r"--no-weight-update applies only to"),
        (["--model", "/nonexistent/model", "--method", "wanda", "--sparsity", "0.5"], r"does not exist"),
        (["--method", "wanda", "--sparsity", "0.5", "--T", "100", "--grow", "wanda"],
         r"DSnoT options \(--T, --grow\) given without --dsnot"),
        (["--method", "wanda", "--sparsity", "0.5", "--dsnot", "--eps", "-1"], r"update_threshold \(epsilon\) must be >= 0"),
        (["--method", "wanda", "--sparsity", "0.5", "--dsnot", "--prune", "random"], r"invalid choice: 'random'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_files(argv, message, tmp_path, capsys):
    import re

    code, err, out, table = _run(argv, tmp_path, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "fix" in lines[0], err
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no partial output


def test_dsnot_knobs_override_the_preset_and_name_the_output():
    from dsnot_lite.cli import _run_config, build_parser
    from dsnot_lite.core.dsnot import preset
    from dsnot_lite.experiment import default_output

    argv = ["run", "--method", "wanda", "--sparsity", "0.6", "--dsnot", "--preset", "paper",
            "--T", "200", "--eps", "0.01", "--grow", "wanda", "--sign-check", "off", "--pow-of-var", "2"]  # fmt: skip
    cfg = _run_config(build_parser().parse_args(argv))
    want = dict(T=200, eps=0.01, grow="wanda", sign_check=False, var_power=2.0)
    got = cfg.spec.config()
    assert {k: getattr(got, k) for k in want} == want
    assert (got.prune, got.statistics, got.layers) == (preset("paper").prune, "true", "all")  # the rest: the preset's
    assert default_output(cfg).name == "smollm2-135m-wanda-dsnot-paper-T200-eps0.01-pow2-sign-off-grow-wanda-s60.json"
    plain = _run_config(build_parser().parse_args(argv[:8]))
    assert plain.spec.dsnot_config is None and default_output(plain).name == "smollm2-135m-wanda-dsnot-paper-s60.json"


def test_parse_nm():
    assert parse_nm("2:4") == (2, 4) and parse_nm(None) is None


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
    for key in ("model", "method", "dsnot", "preset", "sparsity", "nm", "ppl", "seqlen", "windows", "max_windows",
                "nsamples", "seed", "seconds", "peak_memory_mb", "layers"):  # fmt: skip
        assert key in result, key
    assert (result["method"], result["dsnot"], result["preset"], result["sparsity"], result["nm"]) == (
        "wanda", True, "official", 0.5, None,
    )
    assert (result["windows"], result["max_windows"], result["nsamples"], result["seqlen"]) == (3, 3, 4, 32)
    assert result["full_eval"] is False and result["total_windows"] > 3
    assert {"load_model", "calibration_data", "statistics", "prune", "dsnot", "eval", "save_model", "total"} <= set(
        result["seconds"]
    )
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
