"""OpenVINO's bench peers, checked in a child interpreter by tests/test_bench_cli.py: OpenVINO
starts TBB threads that a later os.fork() of the test process does not survive. Prints "ok" and
exits 0 when every check passes; an assertion error otherwise."""
import sys

import numpy as np

import fastrnn
from fastrnn.bench import engine as bench
from fastrnn.bench import streaming


def main():
    # First, as the CLI runs it: the bench imports OpenVINO with its first row and still reports
    # its version. The rows: float32 and bf16 in one run, checked against the oracle and timed.
    assert "openvino" not in sys.modules
    r = bench.run(cells=["lstm"], modes=["inference"], peers=["openvino"], precisions=["bf16"], shapes=["6,2,5,4"],
                  repeats=2, min_time=0.002, gemm_size=64)
    assert r["versions"]["openvino"], r["versions"]
    import openvino
    # OpenVINO runs its bf16 hint in float32 on CPUs without bf16 kernels (a Zen 3): the bf16 peer
    # must then say it is unavailable, not time float32 as bf16
    has_bf16 = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    impls = r["rows"][0]["impls"]
    assert impls["openvino"]["status"] == "timed", impls["openvino"]
    if has_bf16:
        assert impls["openvino-bf16"]["status"] == "timed" and "vs_fastrnn_precision" in impls["openvino-bf16"]
    else:
        assert impls["openvino-bf16"]["status"] == "skipped", impls["openvino-bf16"]
    for cell in bench.CELLS:  # the float32 hint computes in float32, the bf16 hint in bf16
        weights, x = bench.make_problem(cell, "7,3,5,9")
        ref = bench.numpy_forward(cell, {k: v.astype(np.float64) for k, v in weights.items()}, x.astype(np.float64))
        got = bench.OpenVinoImpl(cell, "inference", weights, x, 1).result()["output"]
        np.testing.assert_allclose(got, ref, atol=1e-5)
        if has_bf16:
            low = bench.OpenVinoBf16Impl(cell, "inference", weights, x, 1).result()["output"]
            assert 1e-5 < np.abs(low - ref).max() < bench.BF16_RTOL * np.abs(ref).max(), cell
        else:
            try:
                bench.OpenVinoBf16Impl(cell, "inference", weights, x, 1)
                raise AssertionError(f"{cell}: the bf16 peer ran without bf16 kernels")
            except bench.Unavailable as exc:
                assert "runs the bf16 hint in" in str(exc), exc
    for cell in ("lstm", "gru"):  # the stateful model carries the state, with the right gate order
        layer = (fastrnn.LSTM if cell == "lstm" else fastrnn.GRU)(6, 10, rng=0).eval()
        x = np.random.default_rng(1).standard_normal((5, 2, 6)).astype(np.float32)
        step = streaming._openvino_step(cell, layer, 2, 1)
        got = []
        for t in range(5):
            step(np.ascontiguousarray(x[t]))
            got.append(step.output())
        np.testing.assert_allclose(np.stack(got), layer(x)[0], atol=1e-5)
    print("ok")


if __name__ == "__main__":
    main()
