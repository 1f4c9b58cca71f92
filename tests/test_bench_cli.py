"""The benchmark runner (`fastrnn.bench.engine`, ``python -m fastrnn bench``) on tiny shapes: JSON
fields, sane numbers, the output-agreement check and the error messages. No timing asserts."""
import importlib.util
import json
import mmap
import os
import statistics
import subprocess
import sys
import types

import numpy as np
import pytest

import fastrnn
from fastrnn.bench import engine as _bench
from fastrnn.__main__ import main as cli_main

TINY = dict(shapes=["6,2,5,4"], repeats=2, min_time=0.002, gemm_size=64)


@pytest.fixture(autouse=True)
def _no_settling_pause(monkeypatch):
    monkeypatch.setattr(_bench, "_SETTLE_S", 0.0)  # the pause between samples is for real runs only


def _run(**kw):
    return _bench.run(**{**TINY, **kw})


def test_cli_quick_writes_json_and_table(tmp_path, capsys):
    threads_before = fastrnn.get_num_threads()
    path = tmp_path / "out.json"
    assert cli_main(["bench", "--quick", "--threads", "1", "--peers", "numpy", "--json", str(path)]) == 0
    table = capsys.readouterr().out
    assert fastrnn.get_num_threads() == threads_before  # thread settings restored
    r = json.loads(path.read_text())
    assert {"config", "date", "machine", "versions", "isa", "gemm_gflops", "notes", "rows"} <= set(r)
    assert r["isa"] == fastrnn.get_isa()
    assert r["versions"]["fastrnn"] == fastrnn.__version__
    assert r["machine"]["logical_cpus"] >= 1
    gemm = r["gemm_gflops"]["1"]
    assert gemm > 0
    assert r["config"]["peers"] == ["numpy"] and r["config"]["repeats"] == 3
    assert [(row["cell"], row["mode"]) for row in r["rows"]] == [
        (c, m) for c in _bench.CELLS for m in _bench.MODES]
    for row in r["rows"]:
        shape = _bench.Shape(**row["shape"])
        assert shape == _bench.QUICK_SHAPE and row["threads"] == 1
        assert row["flop"] == _bench.flops(row["cell"], shape, row["mode"])
        f = row["impls"]["fastrnn"]
        assert f["status"] == "timed" and f["rel_diff"] <= _bench.RTOL
        assert len(f["samples_ms"]) == 3 and min(f["samples_ms"]) > 0 and f["inner"] >= 1
        assert f["median_ms"] == pytest.approx(statistics.median(f["samples_ms"]))
        assert f["gflops"] == pytest.approx(row["flop"] / f["median_ms"] / 1e6)
        assert f["pct_gemm"] == pytest.approx(100 * f["gflops"] / gemm)
        assert "speedup" not in f
        if row["mode"] == "inference":
            n = row["impls"]["numpy"]
            assert n["status"] == "timed" and n["checked"] == ["output"] and n["max_abs_diff"] < 1e-4
            assert len(n["ratios"]) == 3 and min(n["ratios"]) > 0
            assert n["speedup"] == pytest.approx(statistics.median(n["ratios"]))
            assert n["ratios"] == pytest.approx([a / b for a, b in zip(n["samples_ms"], f["samples_ms"])])
        else:
            assert "numpy" not in row["impls"]  # inference-only peer
    assert "fastrnn ms" in table and "×numpy" in table and "SGEMM" in table
    assert len([line for line in table.splitlines() if line.startswith(("lstm ", "gru ", "rnn "))]) == 6


def test_torch_peer_outputs_and_gradients_checked():
    pytest.importorskip("torch")
    r = _run(cells=["gru"], peers=["torch"])
    for row in r["rows"]:
        t = row["impls"]["torch"]
        assert t["status"] == "timed" and t["speedup"] > 0 and t["rel_diff"] < 1e-5
        if row["mode"] == "training":
            assert {"output", "grad_x", "grad_weight_hh_l0", "grad_bias_ih_l0"} <= set(t["checked"])
            assert set(row["impls"]["fastrnn"]["checked"]) == set(t["checked"])


def test_onnxruntime_peer_matches_for_every_cell():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    for cell in _bench.CELLS:
        weights, x = _bench.make_problem(cell, "7,3,5,9")
        impl = _bench.OnnxRuntimeImpl(cell, "inference", weights, x, 1)
        ref = _bench.numpy_forward(cell, {k: v.astype(np.float64) for k, v in weights.items()},
                                   x.astype(np.float64))
        np.testing.assert_allclose(impl.result()["output"], ref, atol=1e-5)


def test_openvino_peers_in_their_own_process():
    # OpenVINO starts TBB threads that a later os.fork() in this process does not survive (the
    # fork tests crashed after it): its checks run in a child interpreter (tests/openvino_worker.py)
    pytest.importorskip("onnx")
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed")
    worker = os.path.join(os.path.dirname(__file__), "openvino_worker.py")
    done = subprocess.run([sys.executable, worker], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


class _WrongOutput(_bench.NumpyImpl):
    """An implementation whose output is off by 1 % of its range."""

    name = "wrong"

    def result(self):
        out = super().result()["output"]
        return {"output": out + 0.01 * np.abs(out).max()}


class _SlightlyOff(_bench.NumpyImpl):
    name = "slightly_off"

    def result(self):
        out = super().result()["output"]
        return {"output": out + 1e-4 * np.abs(out).max()}


def test_agreement_check_rejects_a_wrong_implementation(capsys):
    r = _run(cells=["lstm"], modes=["inference"], peers=["numpy"],
             impls={"wrong": _WrongOutput, "slightly_off": _SlightlyOff})
    impls = r["rows"][0]["impls"]
    wrong = impls["wrong"]
    assert wrong["status"] == "rejected" and "median_ms" not in wrong and "speedup" not in wrong
    assert wrong["rel_diff"] == pytest.approx(0.01, rel=1e-3)
    assert "disagrees" in wrong["reason"] and "not timed" in wrong["reason"]
    off = impls["slightly_off"]
    assert off["status"] == "timed" and off["rel_diff"] == pytest.approx(1e-4, rel=1e-2) and off["speedup"] > 0
    table = _bench.format_table(r)
    (row_line,) = [line for line in table.splitlines() if line.startswith("lstm ")]
    assert row_line.split().count("wrong") == 1  # the rejected peer's ms column
    assert "wrong disagrees with the float64 oracle" in table


class _WrongGradient(_bench.FastrnnImpl):
    name = "wrong_grad"

    def result(self):
        res = super().result()
        if "grad_weight_hh_l0" in res:
            res["grad_weight_hh_l0"] = res["grad_weight_hh_l0"] * 1.1
        return res


def test_agreement_check_covers_gradients():
    pytest.importorskip("torch")  # the float64 gradient oracle
    r = _run(cells=["rnn"], peers=[], impls={"wrong_grad": _WrongGradient})
    status = {row["mode"]: row["impls"]["wrong_grad"] for row in r["rows"]}
    assert status["inference"]["status"] == "timed"
    assert status["training"]["status"] == "rejected"
    assert status["training"]["worst"] == "grad_weight_hh_l0"


def test_missing_output_is_rejected():
    class Empty(_bench.NumpyImpl):
        def result(self):
            return {}

    r = _run(cells=["rnn"], modes=["inference"], peers=[], impls={"empty": Empty})
    assert r["rows"][0]["impls"]["empty"]["status"] == "rejected"


def test_skipped_peer_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    r = _run(cells=["rnn"], modes=["inference"], peers=["onnxruntime"])
    entry = r["rows"][0]["impls"]["onnxruntime"]
    assert entry["status"] == "skipped" and "not importable" in entry["reason"]
    assert "skip" in _bench.format_table(r)


def test_memory_is_measured_in_a_subprocess():
    # LSTM training keeps T·N·H·(1 + 5) floats for backward: 100·64·128·6·4 B ≈ 19 MiB, cold
    # (first step) and warm alike.
    r = _run(cells=["lstm"], shapes=["100,64,128,128"], modes=["training"], peers=[], memory=True,
             repeats=1, min_time=0.001)
    f = r["rows"][0]["impls"]["fastrnn"]
    assert "memory_error" not in f
    assert f["base_mem_mb"] > 0 and 15 < f["first_mem_mb"] < 2000 and 15 < f["peak_mem_mb"] < 2000
    table = _bench.format_table(r, markdown=True)
    assert "| mem fastrnn MiB | 1st step fastrnn MiB |" in table and "warm-up step" in table


class _FakeImpl:
    """A training step whose first call in a process does one-time work that stays (lazy
    initialisation: 50 MiB kept) and whose every call uses 30 MiB it releases (mapped and touched
    directly: NumPy's allocator could keep it after use)."""
    held = []

    def __init__(self, *args):
        pass

    def step(self):
        if not _FakeImpl.held:
            _FakeImpl.held.append(self._touched(50))
        self._touched(30).close()

    @staticmethod
    def _touched(mib):
        m = mmap.mmap(-1, mib << 20)
        np.frombuffer(m, np.uint8)[::4096] = 1
        return m


@pytest.mark.parametrize("warm,low,high", [(False, 75, 90), (True, 25, 40)])
def test_memory_child_separates_one_time_initialisation(monkeypatch, capsys, warm, low, high):
    """Cold, the first step's figure holds the one-time work (50 + 30 MiB); warm, the warm-up step
    did it, and two steps show what a step needs (30 MiB)."""
    monkeypatch.setitem(_bench.IMPLS, "fake", _FakeImpl)
    monkeypatch.setattr(_FakeImpl, "held", [])
    spec = {"impl": "fake", "cell": "lstm", "shape": {"name": "t", "T": 2, "N": 1, "C": 2, "H": 2}, "threads": 1,
            "dtype": "float32", "seed": 0, "frontend": "numpy", "warm": warm}
    _bench._memory_child(json.dumps(spec))
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert low < out["peak_mb"] - out["base_mb"] < high, out


def test_markdown_table_has_one_line_per_row():
    r = _run(cells=["lstm", "rnn"], modes=["inference"], peers=["numpy"])
    lines = _bench.format_table(r, markdown=True).splitlines()
    (head,) = [line for line in lines if line.startswith("| cell |")]
    body = [line for line in lines if line.startswith("| lstm") or line.startswith("| rnn")]
    assert len(body) == 2 and all(line.count("|") == head.count("|") == 10 for line in body)


def test_frontend_torch_without_fastrnn_torch(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastrnn.torch", None)
    assert cli_main(["bench", "--quick", "--frontend", "torch"]) == 2
    err = capsys.readouterr().err
    assert "fastrnn.torch" in err and "not importable" in err


def test_frontend_torch_uses_fastrnn_torch_when_importable(monkeypatch):
    torch = pytest.importorskip("torch")
    fake = types.ModuleType("fastrnn.torch")  # stands in for the torch front end
    fake.LSTM, fake.GRU, fake.RNN = torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN
    monkeypatch.setitem(sys.modules, "fastrnn.torch", fake)
    r = _run(cells=["lstm"], frontend="torch", peers=["torch", "numpy"])
    assert r["config"]["subject"] == "fastrnn.torch" and r["config"]["peers"] == ["torch"]
    assert any("ignored peers: numpy" in n for n in r["notes"])
    for row in r["rows"]:
        assert row["impls"]["fastrnn.torch"]["status"] == "timed"
        assert row["impls"]["torch"]["speedup"] > 0


@pytest.mark.skipif(fastrnn.cuda.is_available(), reason="fastrnn's CUDA backend is usable here")
def test_device_cuda_without_backend_is_refused_clearly(capsys):
    assert cli_main(["bench", "--quick", "--device", "cuda"]) == 2
    assert ("--device cuda: fastrnn's CUDA backend cannot be used here: " + fastrnn.cuda.reason()
            in capsys.readouterr().err)


@pytest.mark.parametrize("argv", [["--threads", "0"], ["--shapes", "1,2,3"], ["--cells", "lstmx"],
                                  ["--min-time", "-1"]])
def test_cli_rejects_bad_options(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["bench", *argv])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_shapes_and_flops():
    assert _bench.parse_shape("a") == _bench.SHAPES["A"]
    assert _bench.SHAPES["A"].label == "A (100,1,128)"
    custom = _bench.parse_shape(" 10, 3, 4, 5 ")
    assert (custom.T, custom.N, custom.C, custom.H, custom.label) == (10, 3, 4, 5, "10,3,4,5")
    for bad in ("G", "1,2,3", "1,2,0,4", "a,b,c,d"):
        with pytest.raises(ValueError, match="bench: shape"):
            _bench.parse_shape(bad)
    for cell, gates in (("lstm", 4), ("gru", 3), ("rnn", 1)):
        assert _bench.flops(cell, custom, "inference") == 2 * 10 * 3 * (4 + 5) * gates * 5
        assert _bench.flops(cell, custom, "training") == 3 * _bench.flops(cell, custom, "inference")
    with pytest.raises(ValueError, match="cell"):
        _bench.flops("lstmx", custom, "inference")


def test_run_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown peer 'tensorflow'"):
        _run(peers=["tensorflow"])
    with pytest.raises(ValueError, match="min_time"):
        _run(min_time=0)
    with pytest.raises(TypeError, match="dtype"):
        _run(dtype="float16")


def test_float64_run():
    r = _run(cells=["lstm"], modes=["inference"], peers=["numpy"], dtype="float64")
    assert r["config"]["dtype"] == "float64"
    assert r["rows"][0]["impls"]["numpy"]["rel_diff"] < 1e-12
    assert "DGEMM" in _bench.format_table(r)


def test_cli_streaming_quick(tmp_path, capsys):
    """`bench --streaming`: every row and the bound for each column, the JSON, settings restored."""
    threads_before = fastrnn.get_num_threads()
    path = tmp_path / "stream.json"
    assert cli_main(["bench", "--streaming", "--quick", "--peers", "--stream-batch", "2", "--json", str(path)]) == 0
    table = capsys.readouterr().out
    assert fastrnn.get_num_threads() == threads_before
    r = json.loads(path.read_text())
    assert r["columns"] == ["LSTM H=32", "GRU H=32"] and r["batch"] == 2
    for name in ("fastrnn stream (Python)", "fastrnn stream (C, mean)", "fastrnn layer T=1"):
        assert all(v > 0 for v in r["rows"][name]), name
    assert r["rows"]["torch Cell"] == [None, None]  # no peers asked for
    for col, weights_row, total_row in zip(r["columns"], r["rows"]["bound: weights / read bandwidth"],
                                           r["rows"]["bound: + activations"]):
        b = r["bound"][col]
        assert b["bytes"] == 4 * (4 if col.startswith("LSTM") else 3) * 32 * 64 and b["bandwidth"] > 0
        assert b["weights"] == weights_row and 0 < b["activations"] and b["seconds"] == total_row
        assert b["seconds"] == b["weights"] + b["activations"]
        p50, p99 = r["percentiles"][col]
        assert 0 < p50 <= p99
        # the ratio pairs each round's step with that round's probes (repeats = 2 with --quick)
        assert len(b["rounds"]) == 2 and b["bandwidth"] == np.median([bw for _, bw, _ in b["rounds"]])
        assert b["ratio"] == np.median([step / (b["bytes"] / bw + act) for step, bw, act in b["rounds"]]) > 0
    assert "stream (C p50) / bound, median of rounds" in table and "fastrnn stream (Python)" in table


def test_activations_probe():
    """The bound's pointwise part: a step's activations timed in C++ (best of the passes); a
    hundred times the values take longer; negative counts are refused by name."""
    small = min(fastrnn._C._activations_seconds(384, 256) for _ in range(3))
    large = min(fastrnn._C._activations_seconds(38400, 25600) for _ in range(3))
    assert 0 < small < large
    with pytest.raises(ValueError, match="sigmoids, tanhs >= 0"):
        fastrnn._C._activations_seconds(-1, 0)


def test_cli_streaming_thread_scaling(tmp_path, capsys):
    """`bench --streaming --threads 1 2`: per thread count a stream step and a sequence per step,
    the speed-up, the back-offs and the barrier cost, in the table and the JSON."""
    path = tmp_path / "stream.json"
    assert cli_main(["bench", "--streaming", "--quick", "--peers", "--threads", "1", "2", "--json", str(path)]) == 0
    table = capsys.readouterr().out
    s = json.loads(path.read_text())["threads_scaling"]
    assert s["columns"] == ["LSTM H=32", "GRU H=32"]
    for what in ("stream", "sequence"):
        assert set(s[what]) == {"1", "2"} and all(v > 0 for n in ("1", "2") for v in s[what][n])
    assert all(k >= 0 for k in s["backoffs"]["2"]) and s["barrier_ns"]["2"] > 0
    assert "stream: 2 threads speed-up" in table and "back-offs to 1 thread (2 threads)" in table
    assert "barrier round trip at 2 threads" in table


def test_backoffs_are_noted():
    """A row whose fastrnn steps backed off to one thread says so in the table's notes and its
    progress line."""
    r = _run(cells=["lstm"], modes=["inference"], peers=["numpy"], threads=(2,))
    assert "2" in r.get("barrier_ns", {}) and "backoffs" in r["rows"][0]
    r["rows"][0]["backoffs"] = 3
    assert "dropped to one thread" in _bench.format_table(r) and "(3x)" in _bench.format_table(r)
    assert "backed off to 1 thread 3x" in _bench._progress_line(r["rows"][0], "fastrnn")


class _WrongInt8(_bench.FastrnnInt8Impl):
    """An int8 implementation off by 20 % of the output scale: outside INT8_RTOL."""
    name = "wrong_int8"

    def result(self):
        out = super().result()["output"]
        return {"output": out + 0.2 * np.abs(out).max()}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch 2.13's quantization APIs (the peer)
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_int8_rows_in_the_same_run(capsys):
    peers = [p for p in ("torch", "onnxruntime") if _importable(p)]
    r = _run(cells=["lstm", "gru"], modes=["inference"], peers=peers, precisions=["int8"],
             impls={"wrong_int8": _WrongInt8})
    assert r["config"]["precisions"] == ["int8"]
    for row in r["rows"]:
        impls = row["impls"]
        ours = impls["fastrnn-int8"]
        # held to the quantization error, not to float32's: a float32 tolerance would reject it
        assert ours["status"] == "timed" and _bench.RTOL < ours["rel_diff"] <= _bench.INT8_RTOL
        assert ours["precision"] == "int8" and ours["pct_peak"] > 0 and ours["speedup"] > 0
        assert impls["wrong_int8"]["status"] == "rejected"
        if "torch" in peers:
            t = impls["torch-int8"]
            assert t["status"] == "timed" and t["vs_fastrnn_precision"] > 0
        if "onnxruntime" in peers:
            assert ("onnxruntime-int8" in impls) == (row["cell"] == "lstm")  # ORT quantizes LSTM only
    table = _bench.format_table(r)
    assert "i8 ms" in table and "note: int8 lstm" in table and "of the int8 GEMM peak" in table
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        _run(cells=["lstm"], modes=["inference"], peers=[], precisions=["int4"])


def _importable(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False


@pytest.mark.parametrize("mode", ["inference", "training"])
def test_bf16_rows_in_the_same_run(mode):
    peers = ["torch"] if _importable("torch") else []  # OpenVINO's bf16 row: tests/openvino_worker.py
    r = _run(cells=["lstm"], modes=[mode], peers=peers, precisions=["bf16"])
    impls = r["rows"][0]["impls"]
    ours = impls["fastrnn-bf16"]
    assert ours["status"] == "timed" and 1e-5 < ours["rel_diff"] <= _bench.BF16_RTOL  # bf16, not float32
    assert ours["precision"] == "bf16" and ours["pct_peak"] > 0
    for peer in ("torch-bf16", "torch-autocast") if peers else ():
        assert impls[peer]["status"] in ("timed", "skipped") and "vs_fastrnn_precision" in impls[peer] \
            or impls[peer]["status"] == "skipped"
    assert "note: bf16 lstm" in _bench.format_table(r)
