"""`python -m fastrnn demo` and `info`: the files, the numbers in them, clean errors."""
import json

import pytest

import fastrnn
from fastrnn.__main__ import main

pytest.importorskip("matplotlib")


def test_demo_quick_vanishing(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tanh RNN" in text and "LSTM" in text and "GRU" in text
    for name in ("report.json", "report.md", "loss.png", "gradient_flow.png", "saturation.png"):
        assert (out / name).stat().st_size > (2000 if name.endswith(".png") else 100), name
    report = json.loads((out / "report.json").read_text())
    runs = {r["cell"]: r for r in report["runs"]}
    rnn, lstm, gru = runs["rnn"], runs["lstm"], runs["gru"]
    # The gated cells learn the adding problem; the tanh RNN stays near chance with a vanishing gradient.
    assert lstm["final_loss"] < 0.1 * lstm["baseline"] and gru["final_loss"] < 0.1 * gru["baseline"]
    assert rnn["final_loss"] > 0.8 * rnn["baseline"]
    assert rnn["verdict_end"] == "vanishing" and lstm["verdict_end"] == "healthy"
    assert rnn["gradient_ratio"] < 1e-3 < lstm["gradient_ratio"]
    assert len(rnn["last_report"]["grad_h_norm"][0][0]) == report["config"]["seq_len"]
    md = (out / "report.md").read_text()
    assert "![gradient_flow](gradient_flow.png)" in md and "vanishing" in md


def test_demo_quick_exploding(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["demo", "--scenario", "exploding", "--quick", "--quiet", "--no-plots", "--out", str(out)]) == 0
    runs = json.loads((out / "report.json").read_text())["runs"]
    free, clipped = runs
    assert free["clip"] == "none" and free["stop_reason"] and "TerminateOnNaN" in free["stop_reason"]
    assert free["location"]["quantity"] in ("hidden state", "gradient", "gate")
    assert clipped["clip"] == "global" and clipped["stop_reason"] is None
    assert clipped["final_loss"] is not None and clipped["final_loss"] < 10
    assert not (out / "loss.png").exists()


def test_demo_precision_both(tmp_path, capsys):
    # every model in float32 and in bf16 from the same initial weights and data
    out = tmp_path / "p"
    assert main(["demo", "--quick", "--quiet", "--no-plots", "--cells", "gru", "--steps", "200", "--precision", "both",
                 "--out", str(out)]) == 0
    assert "GRU (fp32)" in capsys.readouterr().out
    fp32, bf16 = json.loads((out / "report.json").read_text())["runs"]
    assert (fp32["precision"], bf16["precision"], bf16["label"]) == ("fp32", "bf16", "GRU (bf16)")
    assert fp32["final_loss"] != bf16["final_loss"]
    assert bf16["final_loss"] < 0.5 * bf16["baseline"] and bf16["verdict_end"] == "healthy"
    assert "precision both" in (out / "report.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--cells", "lstm,foo"], "unknown cell foo"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--task", "bogus"], "invalid choice"),
    (["--seq-len", "1"], "--seq-len must be >= 2"),
    (["--precision", "fp16"], "invalid choice"),
])
def test_demo_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo"] + argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "isa:" in out and "threads:" in out and "blas: scipy-openblas32" in out
    if "avx512" in fastrnn.available_isas():  # the blocking chosen for this CPU, and how to override it
        assert f"avx512 microkernel: {fastrnn._C._microkernel_rows()} rows" in out
    assert f"input product of long sequences: {fastrnn._C._input_gemm()}" in out
