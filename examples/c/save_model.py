"""Save a fastrnn layer for lstm_infer.c (and any C program): MODEL_DIR/model.txt describes the
stack, MODEL_DIR/weights.npy holds every parameter in one flat array in PyTorch's order.

    python save_model.py model/ --cell lstm --input-size 8 --hidden-size 32 --num-layers 2
    ./lstm_infer model/ model/x.npy out/        # out/y.npy equals model/y_python.npy

Also writes an example input model/x.npy [T, N, C] and the Python API's output for it,
model/y_python.npy, so the C result can be checked.
"""
import argparse
import os

import numpy as np

import fastrnn


def cell_name(layer):
    """The cell as the C example's model.txt names it."""
    if isinstance(layer, fastrnn.RNN):
        return f"rnn_{layer.nonlinearity}"
    return "lstm" if isinstance(layer, fastrnn.LSTM) else "gru"


def save_model(layer, directory):
    """Write model.txt and weights.npy for `layer` (a fastrnn.RNN, LSTM or GRU) into `directory`."""
    os.makedirs(directory, exist_ok=True)
    fields = {"cell": cell_name(layer), "input_size": layer.input_size, "hidden_size": layer.hidden_size,
              "num_layers": layer.num_layers, "bidirectional": int(layer.bidirectional), "bias": int(layer.bias),
              "reset_after": int(getattr(layer, "reset_after", True)), "dtype": np.dtype(layer.dtype).name}
    with open(os.path.join(directory, "model.txt"), "w") as f:
        f.writelines(f"{k} {v}\n" for k, v in fields.items())
    # layer.params is ordered like torch's named_parameters: the flat layout of fastrnn.h.
    np.save(os.path.join(directory, "weights.npy"), np.concatenate([p.ravel() for p in layer.params.values()]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory")
    p.add_argument("--cell", choices=["lstm", "gru", "rnn_tanh", "rnn_relu"], default="lstm")
    p.add_argument("--input-size", type=int, default=8)
    p.add_argument("--hidden-size", type=int, default=32)
    p.add_argument("--num-layers", type=int, default=1)
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--seq-len", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    kw = dict(num_layers=a.num_layers, bidirectional=a.bidirectional, dtype=a.dtype, rng=a.seed)
    if a.cell.startswith("rnn"):
        layer = fastrnn.RNN(a.input_size, a.hidden_size, nonlinearity=a.cell[4:], **kw)
    else:
        layer = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[a.cell](a.input_size, a.hidden_size, **kw)
    save_model(layer, a.directory)
    x = np.random.default_rng(a.seed + 1).standard_normal((a.seq_len, a.batch, a.input_size)).astype(a.dtype)
    np.save(os.path.join(a.directory, "x.npy"), x)
    y, _ = layer.eval()(x)
    np.save(os.path.join(a.directory, "y_python.npy"), y)
    print(f"saved {a.cell} ({sum(v.size for v in layer.params.values())} parameters) and an input "
          f"{x.shape} to {a.directory}")


if __name__ == "__main__":
    main()
