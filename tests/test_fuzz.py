"""Input fuzzing of the public surface: layers, functional, torch front end, init, clip.

Hypothesis draws a *case* (a plain dict: sizes, options, layouts, one injected fault or none);
tests/fuzz_worker.py runs it in a long-lived child process, so a segfault, an abort or a hang
fails the example (with a one-line reproducer) instead of killing the test run. Every case must
end in a correct result (compared against the float64 reference for a sample of cases) or in
the error the fault calls for (ValueError/TypeError, KeyError/RuntimeError where docs/design.md ("The contract")
says so), with a message naming the function; inputs are compared bitwise before and after.

Deterministic (``derandomize=True``, no example database): CI runs the same examples every
time. ``FASTRNN_FUZZ_SCALE`` scales the number of examples (.ci/sanitize uses a reduced budget).
"""
import os
import pickle
import select
import shlex
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastrnn

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "fuzz_worker.py")
SCALE = float(os.environ.get("FASTRNN_FUZZ_SCALE", "1"))
CASE_TIMEOUT = 120.0  # seconds for one case (they take milliseconds; sanitized builds are ~10x slower)


def budget(n):
    return settings(max_examples=max(5, int(n * SCALE)), derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------------------- the child process

class Worker:
    """One child running fuzz_worker.py; restarted after a crash or a hang."""

    def __init__(self):
        self.proc = None
        self.stderr = None

    def _start(self):
        self.stderr = tempfile.TemporaryFile()
        # The child imports the fastrnn this process runs (in place or installed), not the sources.
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, env=env)

    def _stderr_tail(self):
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-3000:]

    def _read(self, n, deadline):
        fd, data = self.proc.stdout.fileno(), b""
        while len(data) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, n - len(data))
            if not chunk:
                return b""
            data += chunk
        return data

    def run(self, case, timeout=CASE_TIMEOUT):
        """The worker's result dict, or {"outcome": "crash"/"hang", ...}."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        payload = pickle.dumps(case)
        try:
            self.proc.stdin.write(struct.pack("<I", len(payload)) + payload)
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        deadline = time.monotonic() + timeout
        head = self._read(4, deadline)
        body = self._read(struct.unpack("<I", head)[0], deadline) if head else head
        if body:
            return pickle.loads(body)
        if body is None:  # no answer in time: a hang (or a livelock)
            self.proc.kill()
            self.proc.wait()
            result = {"outcome": "hang", "stderr": self._stderr_tail()}
        else:
            self.proc.wait()
            result = {"outcome": "crash", "returncode": self.proc.returncode, "stderr": self._stderr_tail()}
        self.close()
        return result

    def close(self):
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            self.proc.wait(timeout=60)
            self.proc.stdout.close()
            self.stderr.close()
            self.proc = None


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


def reproducer(case):
    return f"reproduce with: PYTHONPATH=. python tests/fuzz_worker.py {shlex.quote(repr(case))}"


def check(worker, case, expected, where):
    """Run `case`; `expected` is None (must succeed) or a tuple of acceptable error names."""
    res = worker.run(case)
    ctx = f"\ncase: {case!r}\n{reproducer(case)}\nresult: {res!r}"
    assert res["outcome"] in ("ok", "error"), f"the child process {res['outcome']}ed{ctx}"
    assert not res["modified"], f"inputs modified: {res['modified']}{ctx}"
    if expected is None:
        assert res["outcome"] == "ok", f"valid input rejected{ctx}"
        assert not res["problems"], f"wrong result: {res['problems']}{ctx}"
    else:
        assert res["outcome"] == "error", f"invalid input accepted (expected {expected}){ctx}"
        assert res["error"] in expected, f"expected {expected}, got {res['error']}{ctx}"
        assert where is None or where in res["message"], f"the message does not name {where!r}{ctx}"
    return res


# --------------------------------------------------------------------------- recurrent layers

CELL_NAMES = ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_v1"]
CLASS = {"rnn_tanh": "RNN", "rnn_relu": "RNN", "lstm": "LSTM", "gru": "GRU", "gru_v1": "GRU"}
V, T_, K, R = ("ValueError",), ("TypeError",), ("KeyError",), ("RuntimeError",)
VT = ("ValueError", "TypeError")

# fault -> errors it must raise. Every case carries at most one fault; None: a valid call.
FORWARD_FAULTS = {
    "ctor:input_size=0": V, "ctor:hidden_size=0": V, "ctor:num_layers=0": V, "ctor:dropout=1.0": V,
    "ctor:dropout=-0.5": V, "ctor:num_layers=1.5": T_, "ctor:hidden_size='3'": T_, "ctor:dropout='a'": T_,
    "ctor:dtype=float16": T_, "ctor:dtype=int32": T_, "ctor:dtype=str": T_,
    "x:dtype=other": T_, "x:dtype=float16": T_, "x:dtype=int32": T_, "x:dtype=bool": T_,
    "x:dtype=complex64": T_, "x:dtype=object": T_, "x:type=str": T_, "x:type=None": VT, "x:type=dict": VT,
    "x:T=0": V, "x:N=0": V, "x:C+1": V, "x:ndim=1": V, "x:ndim=4": V,
    "lengths:0": V, "lengths:T+1": V, "lengths:-1": V, "lengths:N+1": V, "lengths:2d": V,
    "lengths:unbatched": V, "lengths:float": T_, "lengths:str": T_,
    "hx:shape": V, "hx:dtype": T_, "hx:not_tuple": T_, "hx:len3": T_,
}
RNN_ONLY = {"ctor:nonlinearity='gelu'": V}
LSTM_ONLY = ("hx:not_tuple", "hx:len3")
BACKWARD_FAULTS = {"grad:shape": V, "grad:dtype": T_, "grad_h_n:shape": V, "backward:twice": R, "backward:eval": R}
FUNCTIONAL_FAULTS = {"params:missing": K, "params:shape": V, "params:dtype": T_, "params:not_dict": T_}
LAYOUTS = ["c", "fortran", "strided", "readonly", "reversed", "list"]
ISAS = fastrnn.available_isas()


@st.composite
def recurrent_case(draw, api):
    # Cell variants (docs/variants.md) first, so each gets its share of the cases: LSTMP
    # and peepholes (LSTM), LayerNorm (LSTM, GRU reset_after); then the cell.
    variant = draw(st.sampled_from(["plain", "proj", "peephole", "proj+peephole", "layer_norm"]))
    cell = draw(st.sampled_from({"plain": CELL_NAMES, "layer_norm": ["lstm", "gru"]}.get(variant, ["lstm"])))
    faults = [f for f in FORWARD_FAULTS if cell == "lstm" or f not in LSTM_ONLY] + list(BACKWARD_FAULTS)
    if cell.startswith("rnn"):
        faults += list(RNN_ONLY)
    if api == "functional":
        faults = [f for f in faults if f != "backward:eval"] + list(FUNCTIONAL_FAULTS)
        faults = [f for f in faults if not f.startswith("ctor:")]
    fault = draw(st.one_of(st.none(), st.sampled_from(faults)))
    training = draw(st.sampled_from([True, True, False]))
    backward = training and draw(st.sampled_from([True, True, False]))
    if fault in BACKWARD_FAULTS:
        training = backward = True
    lengths_fault = fault is not None and fault.startswith("lengths:")
    unbatched = fault == "lengths:unbatched" or (not lengths_fault and fault != "x:N=0" and draw(st.booleans()))
    lengths = (None if unbatched and not lengths_fault
               else draw(st.sampled_from([None, "int64", "int32", "uint8", "list"])))
    if lengths_fault:
        lengths = lengths or "int64"
    layout = draw(st.sampled_from(LAYOUTS))
    if fault is not None and fault.startswith(("x:dtype", "x:type")):
        layout = "c"
    H = draw(st.sampled_from([1, 2, 7, 8, 9, 16, 17, 19]))
    proj = min(H - 1, draw(st.sampled_from([1, 3]))) if "proj" in variant and H > 1 else 0
    return dict(
        proj=proj, peephole="peephole" in variant, layer_norm=variant == "layer_norm",
        reg=draw(st.sampled_from([False, True])), bptt_clip=draw(st.sampled_from([None, 0.5])),
        api=api, cell=cell, fault=fault, training=training, backward=backward, unbatched=unbatched,
        lengths=lengths, layout=layout,
        T=draw(st.sampled_from([1, 2, 3, 5, 8])), N=draw(st.sampled_from([1, 2, 3, 4, 7])),
        C=draw(st.sampled_from([1, 2, 3, 5])), H=H,
        L=draw(st.integers(1, 3)), D=draw(st.sampled_from([1, 2])), batch_first=draw(st.booleans()),
        bias=draw(st.booleans()), dropout=draw(st.sampled_from([0.0, 0.4])),
        dtype=draw(st.sampled_from(["float32", "float64"])),
        nonfinite=draw(st.sampled_from(["nan", "inf", "-inf"])) if draw(st.booleans()) and draw(st.booleans())
        else None,
        hx=draw(st.booleans()) or (fault or "").startswith("hx:"), grad_state=draw(st.booleans()),
        isa=draw(st.sampled_from(ISAS)), threads=draw(st.sampled_from([1, 2])),
        seed=draw(st.integers(0, 2**16)),
    )


def expected_for(case):
    f = case["fault"]
    if f is None:
        return None
    return {**FORWARD_FAULTS, **RNN_ONLY, **BACKWARD_FAULTS, **FUNCTIONAL_FAULTS}[f]


def where_for(case):
    """What the error message must name: the class, or the functional entry point."""
    name = CLASS[case["cell"]]
    if case["api"] == "functional" and not (case["fault"] or "").startswith("ctor:"):
        return {"RNN": "rnn_", "LSTM": "lstm_", "GRU": "gru_"}[name]
    return name


@budget(1000)
@given(case=recurrent_case("layer"))
def test_fuzz_layers(worker, case):
    check(worker, case, expected_for(case), where_for(case))


@budget(300)
@given(case=recurrent_case("functional"))
def test_fuzz_functional(worker, case):
    check(worker, case, expected_for(case), where_for(case))


# --------------------------------------------------------------------------- torch front end

TORCH_FAULTS = ["x:T=0", "x:N=0", "x:C+1", "x:ndim=4", "x:dtype=other", "x:dtype=float16", "x:dtype=int32",
                "x:dtype=complex64", "hx:shape", "hx:dtype", "hx:not_tuple"]


@st.composite
def torch_case(draw):
    case = draw(recurrent_case("torch"))
    case["fault"] = draw(st.one_of(st.none(), st.sampled_from(TORCH_FAULTS)))
    if case["fault"] == "x:N=0":
        case["unbatched"] = False
    if case["fault"] == "hx:not_tuple" and case["cell"] != "lstm":
        case["fault"] = None
    case["dropout"] = 0.0  # masks come from torch's RNG in another order: no bitwise twin to compare with
    case.update(proj=0, peephole=False, layer_norm=False, reg=False, bptt_clip=None)  # torch.nn's plain cells
    return case


@budget(150)
@given(case=torch_case())
def test_fuzz_torch_frontend(worker, case):
    pytest.importorskip("torch")
    # The worker compares with torch.nn itself: same rejection, or results within tolerance.
    check(worker, case, None, None)


# --------------------------------------------------------------------------- init and clip

ARRAY_INITS = {
    "uniform": {"a": -0.5, "b": 0.5}, "normal": {"mean": 0.0, "std": 0.1}, "trunc_normal": {"std": 0.5},
    "constant": {"value": 0.25}, "zeros": {}, "ones": {}, "eye": {"gain": 2.0}, "xavier_uniform": {},
    "xavier_normal": {}, "kaiming_uniform": {"a": 0.1}, "kaiming_normal": {"mode": "fan_out"},
    "lecun_uniform": {}, "lecun_normal": {}, "orthogonal": {"gain": 1.0},
    "variance_scaling": {"scale": 2.0, "mode": "fan_avg", "distribution": "uniform"},
}
RANDOM_INITS = {"uniform", "normal", "trunc_normal", "xavier_uniform", "xavier_normal", "kaiming_uniform",
                "kaiming_normal", "lecun_uniform", "lecun_normal", "orthogonal", "variance_scaling"}
INIT_FAULTS = ["shape:negative", "shape:float", "dtype:int32", "dtype:float16", "gates:0", "gates:indivisible",
               "rng:negative", "rng:str", "kwarg:nan", "arr:readonly", "arr:list"]


@st.composite
def init_case(draw):
    name = draw(st.sampled_from(sorted(ARRAY_INITS)))
    inplace = draw(st.booleans())
    fault = draw(st.one_of(st.none(), st.sampled_from(INIT_FAULTS)))
    H, K = draw(st.sampled_from([1, 2, 3, 8])), draw(st.sampled_from([1, 2, 5, 9]))
    gates = draw(st.sampled_from([None, 1, 3, 4]))
    shape = [H * (gates or 1), K]
    kwargs = dict(ARRAY_INITS[name])
    if gates is not None:
        kwargs["gates"] = gates
    if name in RANDOM_INITS:
        kwargs["rng"] = draw(st.sampled_from([0, 7, "generator"]))
    dtype, layout = draw(st.sampled_from(["float32", "float64"])), draw(st.sampled_from(["c", "strided"]))
    edge = draw(st.sampled_from([None, None, "empty", "1d", "3d"]))  # shapes some initializers refuse
    if edge == "empty":
        shape = [0, K]
    elif edge == "1d":
        shape = [shape[0]]
    elif edge == "3d":
        shape = shape + [2]
    if fault == "shape:negative":
        shape = [-1, K]
    elif fault == "shape:float":
        shape = [1.5, K]
    elif fault in ("dtype:int32", "dtype:float16"):
        dtype = fault.split(":")[1]
    elif fault == "gates:0":
        kwargs["gates"] = 0
    elif fault == "gates:indivisible":
        kwargs["gates"] = shape[0] + 1 if shape and shape[0] else 2
    elif fault == "rng:negative":
        kwargs["rng"] = -1
    elif fault == "rng:str":
        kwargs["rng"] = "seed"
    elif fault == "kwarg:nan":
        kwargs[next(iter(ARRAY_INITS[name]), "gain")] = float("nan")
    elif fault in ("arr:readonly", "arr:list"):
        inplace, layout = True, fault.split(":")[1]
    if fault in ("rng:negative", "rng:str") and name not in RANDOM_INITS:
        fault = None
        kwargs.pop("rng", None)
    if fault == "kwarg:nan" and not ARRAY_INITS[name] and name not in ("xavier_uniform", "xavier_normal", "eye"):
        fault = None
        kwargs.pop("gain", None)
    if fault in ("shape:negative", "shape:float") and inplace:
        fault, shape = None, [H * (gates or 1), K]
    if fault == "gates:indivisible" and shape[0] == 0:  # every gate count divides 0
        fault = None
        kwargs.pop("gates")
    return dict(api="init", fn=name + ("_" if inplace else ""), fault=fault, edge=edge, shape=shape,
                dtype=dtype, layout=layout, kwargs=kwargs, nonfinite=None, seed=draw(st.integers(0, 999)))


@budget(200)
@given(case=init_case())
def test_fuzz_init(worker, case):
    if case["fault"] is not None:
        check(worker, case, VT, case["fn"])
    elif case["edge"] is not None:  # allowed to refuse, clearly
        res = worker.run(case)
        assert res["outcome"] in ("ok", "error"), f"child {res['outcome']}ed\n{reproducer(case)}\n{res!r}"
        assert not res["modified"] and not res["problems"], f"{res!r}\n{reproducer(case)}"
        assert res["outcome"] == "ok" or res["error"] in VT, f"{res!r}\n{reproducer(case)}"
    else:
        check(worker, case, None, None)


CLIP_FNS = ["global_norm", "clip_by_value_", "clip_by_norm_", "clip_by_global_norm_", "adaptive_clip_",
            "max_norm_"]
CLIP_FAULTS = ["limit:0", "limit:-1", "limit:str", "limit:nan", "norm_type:0.5", "norm_type:str",
               "nonfinite:bogus", "dtype:int32", "dtype:float16", "arr:readonly", "arr:list"]


@st.composite
def clip_case(draw):
    name = draw(st.sampled_from(CLIP_FNS))
    fault = draw(st.one_of(st.none(), st.sampled_from(CLIP_FAULTS)))
    shapes = draw(st.lists(st.sampled_from([[], [0], [1], [5], [3, 4], [2, 3, 2]]), min_size=0, max_size=3))
    kwargs = {}
    limit = {"clip_by_value_": "clip_value", "clip_by_norm_": "max_norm", "clip_by_global_norm_": "max_norm",
             "adaptive_clip_": "clipping", "max_norm_": "max_value"}.get(name)
    if limit:  # only the norm limits may be +inf (never clip)
        kwargs[limit] = draw(st.sampled_from([1e-3, 0.5, 1.0, 1e3] + [float("inf")] * ("norm" in limit)))
    if name in ("global_norm", "clip_by_global_norm_"):
        kwargs["norm_type"] = draw(st.sampled_from([1.0, 2.0, 3.0, float("inf")]))
    if name not in ("global_norm", "max_norm_"):
        kwargs["nonfinite"] = draw(st.sampled_from(["raise", "skip", "zero", "propagate"]))
    dtype, layout = draw(st.sampled_from(["float32", "float64"])), draw(st.sampled_from(["c", "strided"]))
    nonfinite = draw(st.sampled_from(["nan", "inf", "-inf"])) if draw(st.booleans()) and draw(st.booleans()) else None
    if fault and fault.startswith("limit:") and limit:
        kwargs[limit] = {"0": 0.0, "-1": -1.0, "str": "1", "nan": float("nan")}[fault[6:]]
        if name == "clip_by_value_" and fault == "limit:0":
            fault = None  # clip_value = 0 is allowed (zeros everything)
    elif fault and fault.startswith("norm_type:") and "norm_type" in kwargs:
        kwargs["norm_type"] = 0.5 if fault.endswith("0.5") else "two"
    elif fault == "nonfinite:bogus" and "nonfinite" in kwargs:
        kwargs["nonfinite"] = "bogus"
    elif fault in ("dtype:int32", "dtype:float16") and shapes:
        dtype = fault.split(":")[1]
    elif fault in ("arr:readonly", "arr:list") and shapes and name != "global_norm":
        layout = fault.split(":")[1]
    else:
        fault = None
    container = draw(st.sampled_from(["dict", "list", "array"]))
    if container == "array" and not shapes:
        container = "list"
    used = shapes[:1] if container == "array" else shapes
    if fault == "arr:list" and not any(np.prod(s, dtype=int) > 0 and s for s in used):
        fault, layout = None, "c"  # nested empty lists are an empty collection of tensors: valid
    return dict(api="clip", fn=name, fault=fault, shapes=shapes, dtype=dtype, layout=layout, kwargs=kwargs,
                nonfinite=nonfinite, container=container, seed=draw(st.integers(0, 999)))


@budget(200)
@given(case=clip_case())
def test_fuzz_clip(worker, case):
    if case["fault"] is not None:
        expected = VT
    elif case["nonfinite"] and case["kwargs"].get("nonfinite") == "raise" and any(
            np.prod(s, dtype=int) > 0 for s in (case["shapes"][:1] if case["container"] == "array" else case["shapes"])):
        expected = ("FloatingPointError",)  # the documented "raise" policy
    else:
        expected = None
    check(worker, case, expected, case["fn"] if expected is not None and expected != VT else None)


# --------------------------------------------------------------------------- the harness itself

def test_harness_reports_crash_and_hang():
    """A segfault and a hang in the child are reported as such (with a reproducer), not lost."""
    w = Worker()
    try:
        crashed = w.run({"api": "selftest", "action": "segfault"})
        assert crashed["outcome"] == "crash" and crashed["returncode"] != 0
        hung = w.run({"api": "selftest", "action": "hang"}, timeout=3)
        assert hung["outcome"] == "hang"
        assert w.run({"api": "selftest", "action": "ok"})["outcome"] == "ok"  # restarted after both
    finally:
        w.close()
