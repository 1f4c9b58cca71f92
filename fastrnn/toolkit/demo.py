"""``python -m fastrnn demo``: why LSTM and GRU exist, and what clipping and initialization do.

Scenario "vanishing" (default): a tanh RNN, an LSTM and a GRU of the same size learn the adding
problem (Hochreiter & Schmidhuber 1997) with sequences long enough that the answer depends on
steps ~T/2 in the past. fastrnn's diagnostics record, inside BPTT, how the gradient of the loss
(at the last step) reaches every earlier step. The tanh RNN's gradient vanishes and it stays at
the chance level; the gated cells carry it and learn.

Scenario "exploding": a ReLU RNN with a large identity initialization (IRNN, Le et al. 2015,
scaled past 1) trained by SGD, once without clipping (it diverges to NaN within a few steps;
the report says where the first non-finite value appeared) and once with global-norm clipping
(Pascanu et al. 2013), which keeps it finite.

Writes ``report.json``, ``report.md``, ``loss.png``, ``gradient_flow.png`` and
``saturation.png`` into ``--out``.
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys
import time

import numpy as np

import fastrnn
from ..gradients import clip as C
from ..gradients import diagnostics as dg

CELL_NAMES = {"rnn": "tanh RNN", "relu": "ReLU RNN", "lstm": "LSTM", "gru": "GRU"}
TASKS = ("adding", "sine", "copy")
CLIPS = ("none", "value", "norm", "global")
INITS = ("torch", "keras", "orthogonal", "identity", "chrono")
PRECISIONS = ("fp32", "bf16", "both")

# (steps, seq_len) per scenario; --quick is the smoke-test size.
DEFAULTS = {"vanishing": dict(steps=2000, seq_len=50, init="keras", clip="global", lr=0.01),
            "exploding": dict(steps=400, seq_len=30, init="identity", clip="global", lr=0.01)}
QUICK = {"vanishing": dict(steps=600, seq_len=25), "exploding": dict(steps=60, seq_len=20)}


def add_arguments(p):
    p.add_argument("--scenario", choices=("vanishing", "exploding"), default="vanishing",
                   help="vanishing: RNN vs LSTM vs GRU; exploding: IRNN with and without clipping")
    p.add_argument("--task", choices=TASKS, default="adding")
    p.add_argument("--cells", default=None, help="comma-separated from rnn, relu, lstm, gru (default rnn,lstm,gru)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per model")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length T (copy task: the delay)")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--clip", choices=CLIPS, default=None, help="gradient clipping (default global)")
    p.add_argument("--max-norm", type=float, default=1.0, help="clipping threshold")
    p.add_argument("--init", choices=INITS, default=None, help="initialization preset (default keras)")
    p.add_argument("--identity-scale", type=float, default=1.5, help="exploding scenario: W_hh = scale * I")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="compute of the recurrent layers: fp32, bf16 (bf16 products, float32 parameters and "
                        "gradients) or both, side by side (default fp32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="a fast smoke run (small sizes)")
    p.add_argument("--out", default="fastrnn-demo", help="output directory (default ./fastrnn-demo)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs (also when matplotlib is missing)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def check_arguments(p, args):
    """Fill scenario defaults and reject bad values with argparse's error (exit code 2)."""
    defaults = dict(DEFAULTS[args.scenario])
    if args.quick:
        defaults.update(QUICK[args.scenario])
    for key in ("steps", "seq_len", "init", "clip", "lr"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    cells = args.cells or ("relu" if args.scenario == "exploding" else "rnn,lstm,gru")
    args.cells = [c.strip() for c in cells.split(",") if c.strip()]
    bad = [c for c in args.cells if c not in CELL_NAMES]
    if bad or not args.cells:
        p.error(f"--cells: unknown cell {', '.join(bad) or '(none)'}; choose from {', '.join(CELL_NAMES)}")
    if len(set(args.cells)) != len(args.cells):
        p.error("--cells: each cell at most once")
    for name in ("steps", "seq_len", "hidden", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.task == "adding" and args.seq_len < 2:
        p.error("--seq-len must be >= 2 for the adding task")
    for name in ("lr", "max_norm", "identity_scale"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v > 0):
            p.error(f"--{name.replace('_', '-')} must be a positive number, got {v}")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")


# --------------------------------------------------------------------------- building blocks

def make_task(args):
    """(batch(rng) -> (x, y), loss, head size, baseline, per-step head?)."""
    T, N = args.seq_len, args.batch
    if args.task == "adding":
        return (lambda rng: fastrnn.tasks.adding(T, N, rng=rng)), fastrnn.losses.mse, 2, 1, \
            fastrnn.tasks.adding_baseline(), False
    if args.task == "sine":
        return (lambda rng: fastrnn.tasks.sine(T, N, rng=rng)), fastrnn.losses.mse, 1, 1, \
            fastrnn.tasks.sine_baseline(predictor="last"), True
    K, length = 8, 10
    return (lambda rng: fastrnn.tasks.copy(T, N, rng=rng, n_symbols=K, length=length)), \
        fastrnn.losses.cross_entropy, K + 2, K + 1, fastrnn.tasks.copy_baseline(T, K, length), True


def make_model(cell, args, n_in, n_out, per_step, seed, precision="fp32"):
    H = args.hidden
    if cell in ("rnn", "relu"):
        layer = fastrnn.RNN(n_in, H, nonlinearity="relu" if cell == "relu" else "tanh", rng=seed)
    else:
        layer = (fastrnn.LSTM if cell == "lstm" else fastrnn.GRU)(n_in, H, rng=seed)
    if args.init == "identity":
        fastrnn.init.identity_(layer, scale=args.identity_scale if args.scenario == "exploding" else 1.0)
        fastrnn.init.normal_(layer.params["weight_ih_l0"], std=0.1, rng=seed + 1)
    elif args.init == "chrono":
        fastrnn.init.apply_(layer, "chrono", rng=seed + 1, t_max=max(args.seq_len, 3)) \
            if cell in ("lstm", "gru") else fastrnn.init.apply_(layer, "haste", rng=seed + 1)
    else:
        fastrnn.init.apply_(layer, args.init, rng=seed + 1)
    if precision == "bf16":  # the same initial weights: only the products' precision differs
        layer.compute_dtype = "bfloat16"
    mods = [layer] + ([] if per_step else [fastrnn.LastStep()]) + [fastrnn.Linear(H, n_out, rng=seed + 2)]
    return fastrnn.Sequential(*mods), layer


def make_clip(kind, max_norm):
    if kind == "none":
        return None
    fn = {"value": C.clip_by_value_, "norm": C.clip_by_norm_, "global": C.clip_by_global_norm_}[kind]
    key = "clip_value" if kind == "value" else "max_norm"
    return functools.partial(fn, **{key: max_norm, "nonfinite": "skip"})


def train_one(label, cell, args, clip_kind, optimizer, precision="fp32"):
    """Train one model; returns a dict of results (numbers, histories, reports)."""
    batch, loss, n_in, n_out, baseline, per_step = make_task(args)
    model, layer = make_model(cell, args, n_in, n_out, per_step, args.seed, precision)
    opt = optimizer(model)
    rng = np.random.default_rng(args.seed + 100)
    val = [batch(np.random.default_rng(args.seed + 999))]
    epochs = 10 if args.steps >= 10 else args.steps
    per_epoch = max(1, args.steps // epochs)
    monitor = dg.Monitor(layer, max_norm=args.max_norm, every=max(1, args.steps // 100))
    stop = fastrnn.callbacks.TerminateOnNaN()
    start = time.perf_counter()
    if not args.quiet:
        print(f"  {label}", file=sys.stderr, flush=True)
    hist = fastrnn.fit(model, lambda: [batch(rng) for _ in range(per_epoch)], loss, opt, epochs=epochs,
                       clip=make_clip(clip_kind, args.max_norm), callbacks=[monitor, stop],
                       verbose=not args.quiet, val_data=val)
    seconds = time.perf_counter() - start
    final = hist.val_loss[-1] if hist.val_loss else float("nan")
    first, last = monitor.first_report, monitor.last_report
    return dict(label=label, cell=cell, clip=clip_kind, precision=precision, steps=hist.steps, seconds=seconds,
                baseline=baseline,
                final_loss=final, stop_reason=hist.stop_reason, location=stop.location, history=hist.to_dict(),
                monitor=monitor.records, first_report=first, last_report=last,
                verdict_start=first.verdict if first else None, verdict_end=last.verdict if last else None,
                gradient_ratio=dg.finite_reduce(np.min, last.gradient_ratio) if last else float("nan"))


# --------------------------------------------------------------------------- output

def table(results, args):
    head = f"{'model':<28} {'loss':>10} {'chance':>8} {'loss/chance':>11} {'verdict (start -> end)':>24} " \
           f"{'|dL/dh| far/near':>16} {'steps':>6} {'time':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        ratio = r["final_loss"] / r["baseline"] if r["baseline"] else float("nan")
        verdict = f"{r['verdict_start']} -> {r['verdict_end']}"
        lines.append(f"{r['label']:<28} {r['final_loss']:>10.4g} {r['baseline']:>8.4g} {ratio:>11.3f} "
                     f"{verdict:>24} {r['gradient_ratio']:>16.2e} {r['steps']:>6} {r['seconds']:>6.1f}s")
        if r["stop_reason"]:
            lines.append(f"    stopped: {r['stop_reason']}")
    return "\n".join(lines)


def plots(results, args, out):
    plt = dg._pyplot()
    files = {}
    # Loss curves (moving average of the training loss) and the chance level.
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for r in results:
        loss = np.array(r["history"]["loss"], float)
        k = max(1, len(loss) // 50)
        smooth = np.convolve(np.where(np.isfinite(loss), loss, np.nan), np.ones(k) / k, mode="valid")
        ax.semilogy(np.arange(len(smooth)) + k - 1, smooth, label=r["label"])
    ax.axhline(results[0]["baseline"], color="k", ls="--", lw=1, label="chance level")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (moving average)")
    ax.set_title(f"{args.task} task, T={args.seq_len}, H={args.hidden}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    files["loss"] = _save(fig, out, "loss.png")
    # Gradient flow: |dL/dh_t| against t, at the first and the last recorded step.
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
    for ax, r in zip(axes[0], results):
        for which, rep, style in (("start", r["first_report"], "--"), ("end", r["last_report"], "-")):
            if rep is None:
                continue
            norms = np.where(rep.grad_h_norm[0, 0] > 0, rep.grad_h_norm[0, 0], np.nan)
            ax.semilogy(np.arange(rep.T), norms, style, label=f"{which}: {rep.verdict} "
                        f"(recurrence {rep.change_decades[0, 0]:+.1f} decades)")
        ax.set_title(r["label"])
        ax.set_xlabel("time step t (loss at the last step)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("‖dL/dh_t‖ inside BPTT")
    fig.tight_layout()
    files["gradient_flow"] = _save(fig, out, "gradient_flow.png")
    # Gate saturation at the end of training.
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.6), squeeze=False, constrained_layout=True)
    img = None
    for ax, r in zip(axes[0], results):
        rep = r["last_report"]
        if rep is None or not rep.saturation:
            ax.set_axis_off()
            continue
        names = list(rep.saturation)
        img = ax.imshow(np.array([rep.saturation[g][0, 0] for g in names]), aspect="auto", vmin=0, vmax=1,
                        cmap="magma", interpolation="nearest")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("time step t")
        ax.set_title(f"{r['label']}: saturated units")
    if img is not None:
        fig.colorbar(img, ax=axes[0].tolist(), shrink=0.9, label="fraction of units")
    files["saturation"] = _save(fig, out, "saturation.png")
    plt.close("all")
    return files


def _save(fig, out, name):
    path = os.path.join(out, name)
    fig.savefig(path, dpi=100)
    return name


def markdown(results, args, text, files):
    lines = [f"# fastrnn demo: {args.scenario} gradients", "",
             f"Task `{args.task}`, T={args.seq_len}, hidden={args.hidden}, batch={args.batch}, "
             f"{args.steps} steps, init `{args.init}`, precision {args.precision}, seed {args.seed}, fastrnn {fastrnn.__version__} "
             f"({fastrnn.get_isa()}, {fastrnn.get_num_threads()} threads).", "", "```", text, "```", ""]
    captions = {"loss": "Training loss against the chance level.",
                "gradient_flow": "‖dL/dh_t‖ recorded inside BPTT at the first and the last step of training: "
                                 "how much of the loss's gradient reaches each earlier step.",
                "saturation": "Fraction of saturated gate units per step at the end of training."}
    for key, name in files.items():
        lines += [f"![{key}]({name})", "", captions[key], ""]
    return "\n".join(lines)


def to_json(results, args):
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(a) for k, a in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(a) for a in v]
        if isinstance(v, (np.floating, np.integer)):
            return clean(v.item())
        return v
    config = {k: v for k, v in vars(args).items() if k not in ("func",)}
    runs = []
    for r in results:
        d = {k: v for k, v in r.items() if k not in ("first_report", "last_report")}
        d["first_report"] = r["first_report"].to_dict() if r["first_report"] else None
        d["last_report"] = r["last_report"].to_dict() if r["last_report"] else None
        runs.append(d)
    return json.dumps(clean({"fastrnn": fastrnn.__version__, "isa": fastrnn.get_isa(), "config": config,
                             "runs": runs}), indent=1)


def run(args):
    if args.threads is not None:
        fastrnn.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    print(f"fastrnn {fastrnn.__version__} demo ({args.scenario}): task {args.task}, T={args.seq_len}, "
          f"H={args.hidden}, N={args.batch}, {args.steps} steps per model, isa {fastrnn.get_isa()}, "
          f"{fastrnn.get_num_threads()} threads")
    results = []
    precisions = ("fp32", "bf16") if args.precision == "both" else (args.precision,)
    tag = (lambda p: f" ({p})") if args.precision != "fp32" else (lambda p: "")
    if args.scenario == "vanishing":
        for cell in args.cells:
            for precision in precisions:
                results.append(train_one(CELL_NAMES[cell] + tag(precision), cell, args, args.clip,
                                         lambda m: fastrnn.optim.Adam(m, lr=args.lr), precision))
    else:
        sgd = lambda m: fastrnn.optim.SGD(m, lr=args.lr, momentum=0.9)  # noqa: E731  (Pascanu et al. used SGD)
        for cell in args.cells:
            for clip_kind in ("none", args.clip if args.clip != "none" else "global"):
                for precision in precisions:
                    label = f"{CELL_NAMES[cell]}, clip {clip_kind}{tag(precision)}"
                    results.append(train_one(label, cell, args, clip_kind, sgd, precision))
    text = table(results, args)
    print(text)
    files = {}
    if not args.no_plots:
        try:
            files = plots(results, args, args.out)
        except ImportError as exc:
            print(f"(no plots: {exc})")
    with open(os.path.join(args.out, "report.json"), "w") as f:
        f.write(to_json(results, args))
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(markdown(results, args, text, files))
    written = ["report.json", "report.md"] + list(files.values())
    print(f"wrote {', '.join(written)} to {os.path.abspath(args.out)}")
    return 0
