"""``python -m fastrnn bench --streaming``: the latency of one streaming step (one frame per call,
the state carried; inference, N slots), fastrnn against its peers.

Rows, per cell and hidden size (input size = hidden size, one layer, float32):

- fastrnn stream, Python: ``layer.stream(N).step(x, out=out)``, the mean of a timed loop;
- fastrnn stream, C: ``fastrnn_stream_step``'s path timed step by step from C++ (no Python in
  between): p50 and p99 of every step;
- fastrnn layer T=1: ``layer(x, state)`` with one time step, the state fed back;
- torch ``nn.LSTMCell`` / ``nn.GRUCell`` and ``nn.LSTM`` / ``nn.GRU`` with T=1 (no_grad);
- ONNX Runtime: an LSTM / GRU node with seq_len 1, one ``run`` per step, the state fed back;
- OpenVINO: a stateful model (an ``LSTMCell`` / ``GRUCell`` between ``ReadValue`` and ``Assign``:
  the state lives in the infer request across calls), one ``infer`` per step, float32 hint;
- the bound: one step reads W_ih and W_hh (``4 G H (C + H)`` bytes), which stay in cache between
  steps; at the read bandwidth measured here on a buffer of that size with fastrnn's own vector
  loads (``_C._read_bandwidth``) that takes ``bytes / bandwidth``; plus its pointwise work, the
  cell's activations over the step's gates with fastrnn's own kernels (``_C._activations_seconds``:
  LSTM 3 N H sigmoids and 2 N H tanh, GRU 2 N H and N H; the cell's few FMAs a unit are left
  out, and the two parts are taken not to overlap). The step's p50 and both probes are taken again
  in ``repeats`` alternating rounds after the peers, and "stream (C p50) / bound" is the median of
  the rounds' ratios: on a shared VM the step and the bandwidth move with the host's load
  (10-20 % between runs minutes apart), and a ratio of numbers taken at different moments moved
  with them.

Each Python-timed row is the best of ``repeats`` rounds of a loop of at least ``min_time``
seconds.

With several thread counts (``--threads 1 2``) a second table follows (`thread_scaling`): at
H = 128, 256 and 512, a stream step's C-timed p50 and a T = 100 sequence call's time per step at
each count (rounds alternate the counts), the speed-up over the first, how often the pool's
back-off sent the steps to one thread, and the barrier's round trip. Each shape starts from a
fresh back-off state: a back-off lasts a second or more, and one taken at H = 128 (where two
threads gain nothing and wait most) would otherwise run the next shape's steps on one thread.
"""
from __future__ import annotations

import time

import numpy as np

from .. import _C
from .engine import _threads

CELLS = ("lstm", "gru")
HIDDEN = (128, 512)
SCALING_HIDDEN = (128, 256, 512)  # 256: half of an LSTM's W_hh (512 KB) fits one core's L2
GATES = {"lstm": 4, "gru": 3}


def _loop(fn, min_time, repeats):
    """Seconds per call: the best of `repeats` rounds, each a loop of at least `min_time` s."""
    for _ in range(20):
        fn()
    n, t = 1, 0.0
    while True:  # calibrate the loop length
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
        if t >= min_time / 4 or n > 1 << 20:
            break
        n *= 2
    n = max(1, int(n * min_time / max(t, 1e-9)))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def _onnx_step(cell, layer, N, threads):
    """An ONNX Runtime session of one step of `layer` (fastrnn's weights, ONNX gate order), and a
    function running it with the state fed back."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    H, C = layer.hidden_size, layer.input_size
    p = layer.params
    order = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2]}[cell]  # torch i f g o -> ONNX i o f c; r z n -> z r h

    def reorder(w):
        return np.concatenate([w.reshape(len(order), H, -1)[k] for k in order]).reshape(w.shape)
    W = reorder(p["weight_ih_l0"])[None]
    R = reorder(p["weight_hh_l0"])[None]
    B = np.concatenate([reorder(p["bias_ih_l0"][:, None])[:, 0], reorder(p["bias_hh_l0"][:, None])[:, 0]])[None]
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in ((W, "W"), (R, "R"), (B, "B"))]
    state_in = ["h0"] + (["c0"] if cell == "lstm" else [])
    state_out = ["Y_h"] + (["Y_c"] if cell == "lstm" else [])
    ins = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, N, C])] + [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, N, H]) for n in state_in]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, N, H]) for n in state_out]
    attrs = {"hidden_size": H}
    if cell == "gru":
        attrs["linear_before_reset"] = 1  # torch's GRU (reset_after)
    node = helper.make_node(cell.upper(), ["X", "W", "R", "B", "", *state_in], ["", *state_out], **attrs)
    model = helper.make_model(helper.make_graph([node], "step", ins, outs, inits),
                              opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, N, C)).astype(np.float32)
    state = {n: np.zeros((1, N, H), np.float32) for n in state_in}

    def step():
        res = sess.run(state_out, {"X": x, **state})
        for n, v in zip(state_in, res):
            state[n] = v
    return step


def _openvino_step(cell, layer, N, threads):
    """An OpenVINO stateful model of one step of `layer` (its state in variables of the infer
    request, carried across calls), and a function running one step; its ``output()`` is the
    last step's h [N, H]."""
    import openvino as ov
    import openvino.opset13 as ops
    from openvino.op.util import Variable, VariableInfo

    H, C = layer.hidden_size, layer.input_size
    p = layer.params
    order = {"lstm": [1, 0, 2, 3], "gru": [1, 0, 2]}[cell]  # torch i f g o -> OpenVINO f i c o; r z n -> z r h
    G = len(order)

    def reorder(w):
        return np.ascontiguousarray(np.concatenate([w.reshape(G, H, -1)[k] for k in order]).reshape(w.shape))
    b_ih, b_hh = reorder(p["bias_ih_l0"][:, None])[:, 0], reorder(p["bias_hh_l0"][:, None])[:, 0]
    # GRU with linear_before_reset: [b_z, b_r, b_ih_h, b_hh_h]; else one summed bias
    bias = np.concatenate([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:], b_hh[2 * H:]]) if cell == "gru" else b_ih + b_hh
    x_in = ops.parameter([N, C], np.float32, name="x")
    states, reads = [], []
    for name in ("h", "c")[:2 if cell == "lstm" else 1]:
        info = VariableInfo()
        info.data_shape, info.data_type, info.variable_id = ov.PartialShape([N, H]), ov.Type.f32, name
        states.append(Variable(info))
        reads.append(ops.read_value(ops.constant(np.zeros((N, H), np.float32)), states[-1]))
    W, R = ops.constant(reorder(p["weight_ih_l0"])), ops.constant(reorder(p["weight_hh_l0"]))
    B = ops.constant(bias.astype(np.float32))
    node = ops.lstm_cell(x_in, *reads, W, R, B, H) if cell == "lstm" else \
        ops.gru_cell(x_in, reads[0], W, R, B, H, linear_before_reset=True)
    shape = ops.constant(np.array([N, H], np.int64))
    new = [ops.reshape(node.output(i), shape, False) for i in range(len(states))]  # Assign takes a node
    model = ov.Model([ops.result(new[0])], [ops.assign(v, var) for v, var in zip(new, states)], [x_in], "step")
    core = ov.Core()
    request = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
                                                "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
                                 ).create_infer_request()
    x = np.random.default_rng(0).standard_normal((N, C)).astype(np.float32)

    def step(xt=x):
        request.infer({0: xt})
    step.output = lambda: np.array(request.get_output_tensor(0).data)
    return step


def run(cells=CELLS, hidden=HIDDEN, batch=1, threads=1, peers=("torch", "onnxruntime", "openvino"), repeats=5,
        min_time=0.2,
        c_steps=10000, progress=None):
    """Every row's seconds per step: {"columns": [...], "rows": {name: [s or None]}, "notes": [...],
    "percentiles": {column: (p50, p99)} of the C-timed steps, "bound": {column: {"bytes", "bandwidth"
    (B/s), "weights" and "activations" (s), "seconds" (their sum), the medians of the rounds,
    "rounds": [(step p50 s, bandwidth, activations s)] and "ratio": the median of the rounds' step
    p50 / (bytes / bandwidth + activations)}}}."""
    import fastrnn

    say = progress or (lambda line: None)
    torch = None
    if "torch" in peers:
        try:
            import torch
        except ImportError:
            pass
    with _threads(threads):  # fastrnn, torch and NumPy's BLAS (threadpoolctl), restored afterwards
        return _run(fastrnn, torch, cells, hidden, batch, threads, peers, repeats, min_time, c_steps, say)


def _run(fastrnn, torch, cells, hidden, batch, threads, peers, repeats, min_time, c_steps, say):
    notes = []
    if "torch" in peers and torch is None:
        notes.append("torch: not installed, its rows are skipped")
    columns, rows, pct, bound = [], {}, {}, {}
    names = ["fastrnn stream (Python)", "fastrnn stream (C, mean)", "fastrnn layer T=1", "torch Cell",
             "torch nn T=1", "onnxruntime 1 step/run", "openvino stateful 1 step/infer",
             "bound: weights / read bandwidth", "bound: + activations"]
    for name in names:
        rows[name] = []
    for cell in cells:
        for H in hidden:
            col = f"{cell.upper()} H={H}"
            columns.append(col)
            say(f"streaming: {col}, N={batch}, {threads} thread(s)")
            cls = fastrnn.LSTM if cell == "lstm" else fastrnn.GRU
            layer = cls(H, H, rng=0).eval()
            x = np.random.default_rng(1).standard_normal((batch, H)).astype(np.float32)
            s = layer.stream(batch)
            out = np.empty((batch, H), np.float32)
            rows[names[0]].append(_loop(lambda: s.step(x, out=out), min_time, repeats))
            ns = s._core.time_steps(x, out, c_steps if H <= 256 else max(c_steps // 10, 100))
            rows[names[1]].append(float(ns.mean()) * 1e-9)
            pct[col] = (float(np.percentile(ns, 50)) * 1e-9, float(np.percentile(ns, 99)) * 1e-9)
            x3 = x[None]
            state = {"hx": None}

            def layer_step():
                _, state["hx"] = layer(x3, state["hx"])
            rows[names[2]].append(_loop(layer_step, min_time / 2, max(2, repeats // 2)))
            if torch is not None:
                tc = (torch.nn.LSTMCell if cell == "lstm" else torch.nn.GRUCell)(H, H)
                tn = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(H, H)
                sd = {k: torch.from_numpy(v) for k, v in layer.state_dict().items()}
                tn.load_state_dict(sd)
                tc.load_state_dict({k[:-3]: v for k, v in sd.items()})
                xt = torch.from_numpy(x)
                cs, ns_ = {"s": None}, {"s": None}

                def cell_step():
                    with torch.no_grad():
                        cs["s"] = tc(xt, cs["s"])

                def nn_step():
                    with torch.no_grad():
                        _, ns_["s"] = tn(xt[None], ns_["s"])
                rows[names[3]].append(_loop(cell_step, min_time, repeats))
                rows[names[4]].append(_loop(nn_step, min_time / 2, max(2, repeats // 2)))
            else:
                rows[names[3]].append(None)
                rows[names[4]].append(None)
            for row, peer, make_step in ((names[5], "onnxruntime", _onnx_step), (names[6], "openvino", _openvino_step)):
                seconds = None
                if peer in peers:
                    try:
                        seconds = _loop(make_step(cell, layer, batch, threads), min_time, repeats)
                    except ImportError:
                        if f"{peer}: not installed, its row is skipped" not in notes:
                            notes.append(f"{peer}: not installed, its row is skipped")
                rows[row].append(seconds)
            nbytes = 4 * GATES[cell] * H * (H + H)
            sigmoids, tanhs = ((3, 2) if cell == "lstm" else (2, 1))
            rounds = []  # (step p50, bandwidth, activations), taken one after the other
            for _ in range(max(1, repeats)):
                p50 = float(np.percentile(s._core.time_steps(x, out, max(c_steps // 10, 100)), 50)) * 1e-9
                rounds.append((p50, _C._read_bandwidth(nbytes),
                               _C._activations_seconds(sigmoids * batch * H, tanhs * batch * H)))
            bw = float(np.median([r[1] for r in rounds]))
            act = float(np.median([r[2] for r in rounds]))
            ratio = float(np.median([p50 / (nbytes / b + a) for p50, b, a in rounds]))
            bound[col] = {"bytes": nbytes, "bandwidth": bw, "weights": nbytes / bw, "activations": act,
                          "seconds": nbytes / bw + act, "ratio": ratio, "rounds": rounds}
            rows[names[7]].append(nbytes / bw)
            rows[names[8]].append(nbytes / bw + act)
    return {"columns": columns, "rows": rows, "notes": notes, "percentiles": pct, "bound": bound,
            "batch": batch, "threads": threads, "isa": fastrnn.get_isa(), "cpu": _cpu_name()}


def thread_scaling(cells=CELLS, hidden=SCALING_HIDDEN, thread_counts=(1, 2), batch=1, T=100, rounds=5, c_steps=2000,
                   progress=None):
    """Part of a step's time that more threads save, at N = ``batch``: per thread count, a stream's
    C-timed p50 and a T-step sequence call's time per step, in rounds that alternate the counts;
    the pool's back-offs to one thread (left on, as users run it) and its barrier cost.
    {"columns", "stream": {n: [s]}, "sequence": {n: [s]}, "backoffs": {n: [k]}, "barrier_ns": {n: ns}}."""
    import fastrnn

    say = progress or (lambda line: None)
    res = {"columns": [], "stream": {}, "sequence": {}, "backoffs": {}, "batch": batch, "T": T,
           "barrier_ns": {}, "cpu": _cpu_name(), "isa": fastrnn.get_isa()}
    for n in thread_counts:
        for key in ("stream", "sequence", "backoffs"):
            res[key][n] = []
        if n > 1:
            with _threads(n):
                res["barrier_ns"][n] = _C._barrier_ns(n, 2000)
    for cell in cells:
        for H in hidden:
            col = f"{cell.upper()} H={H}"
            res["columns"].append(col)
            say(f"streaming threads: {col}, N={batch}, threads {', '.join(map(str, thread_counts))}")
            layer = (fastrnn.LSTM if cell == "lstm" else fastrnn.GRU)(H, H, rng=0).eval()
            g = np.random.default_rng(1)
            x = g.standard_normal((batch, H)).astype(np.float32)
            seq = g.standard_normal((T, batch, H)).astype(np.float32)
            out = np.empty((batch, H), np.float32)
            s = layer.stream(batch)
            _C._set_thread_backoff(_C._set_thread_backoff(True))  # a fresh back-off state, the setting kept
            taken = {n: ([], [], 0) for n in thread_counts}
            steps = c_steps if H <= 256 else max(c_steps // 10, 50)
            for r in range(rounds):
                for n in thread_counts[r % len(thread_counts):] + thread_counts[:r % len(thread_counts)]:
                    with _threads(n):
                        _C._wait_stats(True)
                        p50 = float(np.percentile(s._core.time_steps(x, out, steps), 50)) * 1e-9
                        best = min(_timed(lambda: layer(seq)) for _ in range(3)) / T
                        st, sq, k = taken[n]
                        taken[n] = (st + [p50], sq + [best], k + _C._wait_stats(True)[3])
            for n, (st, sq, k) in taken.items():
                res["stream"][n].append(float(np.median(st)))
                res["sequence"][n].append(float(np.median(sq)))
                res["backoffs"][n].append(k)
    return res


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def format_scaling(res, markdown=False):
    """Microseconds per step at each thread count, the speed-up over the first, the back-offs."""
    cols, counts = res["columns"], list(res["stream"])
    lines = [f"threads at N={res['batch']}: stream step (C p50) and a T={res['T']} sequence call per step, "
             f"float32, isa {res['isa']}, {res['cpu']}"]
    table = [["us per step"] + cols]
    for what in ("stream", "sequence"):
        for n in counts:
            table.append([f"{what}, {n} thread(s)"] + [f"{v * 1e6:.2f}" for v in res[what][n]])
        for n in counts[1:]:
            table.append([f"{what}: {n} threads speed-up"] + [
                f"{a / b:.2f}x" for a, b in zip(res[what][counts[0]], res[what][n])])
    for n in counts[1:]:
        table.append([f"back-offs to 1 thread ({n} threads)"] + [str(k) for k in res["backoffs"][n]])
    out = _table(table, markdown)
    notes = [f"note: barrier round trip at {n} threads: {ns / 1e3:.2f} us (one per step phase)"
             for n, ns in res["barrier_ns"].items()]
    if any(k for n in counts[1:] for k in res["backoffs"][n]):
        notes.append("note: a back-off ran the steps on one thread for a while (over a 1 ms window the threads "
                     "spent a quarter of their time in long waits for each other); those rows mix 1- and "
                     "n-thread steps")
    return "\n".join(lines + out + notes)


def _table(table, markdown):
    if markdown:
        out = ["| " + " | ".join(table[0]) + " |", "|" + "---|" + "---:|" * (len(table[0]) - 1)]
        return out + ["| " + " | ".join(r) + " |" for r in table[1:]]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
            for r in table]


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def format_table(result, markdown=False):
    """Microseconds per step, then the ratios a reader asks for."""
    cols = result["columns"]
    lines = [f"streaming inference, one step per call, N={result['batch']}, {result['threads']} thread(s), "
             f"float32, isa {result['isa']}, {result['cpu']}"]
    fast = result["rows"]["fastrnn stream (Python)"]
    table = [["us per step"] + cols]
    for name, vals in result["rows"].items():
        table.append([name] + ["-" if v is None else f"{v * 1e6:.2f}" for v in vals])
    table.append(["p50 / p99 (C)"] + [f"{result['percentiles'][c][0] * 1e6:.2f} / {result['percentiles'][c][1] * 1e6:.2f}"
                                      for c in cols])
    for name in ("torch Cell", "torch nn T=1", "onnxruntime 1 step/run", "openvino stateful 1 step/infer",
                 "fastrnn layer T=1"):
        vals = result["rows"][name]
        table.append([f"{name} / stream (Python)"] + ["-" if v is None else f"{v / f:.2f}x" for v, f in zip(vals, fast)])
    table.append(["stream (C p50) / bound, median of rounds"] + [f"{result['bound'][c]['ratio']:.2f}x" for c in cols])
    table.append(["read bandwidth GB/s"] + [f"{result['bound'][c]['bandwidth'] / 1e9:.0f} "
                                            f"({result['bound'][c]['bytes'] // 1024} KB)" for c in cols])
    out = _table(table, markdown)
    return "\n".join(lines + out + [f"note: {n}" for n in result["notes"]])


def run_args(args):
    """``python -m fastrnn bench --streaming`` from the bench's parsed options: print the table,
    write the JSON; exit status."""
    import json
    import sys
    quick = args.quick
    result = run(hidden=(32,) if quick else HIDDEN, batch=args.stream_batch, threads=args.thread_counts[0],
                 peers=args.peers, repeats=args.repeats or (2 if quick else 5),
                 min_time=args.min_time or (0.01 if quick else 0.2), c_steps=300 if quick else 10000,
                 progress=lambda line: print(line, file=sys.stderr, flush=True))
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    scaling = None
    if len(args.thread_counts) > 1:  # --threads 1 2: how far more threads cut a step at this N
        scaling = thread_scaling(hidden=(32,) if quick else SCALING_HIDDEN, thread_counts=tuple(args.thread_counts),
                                 batch=args.stream_batch, rounds=2 if quick else 5, c_steps=100 if quick else 2000,
                                 progress=say)
        result["threads_scaling"] = scaling
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=float)
    print(format_table(result, markdown=args.markdown))
    if scaling:
        print()
        print(format_scaling(scaling, markdown=args.markdown))
    return 0
