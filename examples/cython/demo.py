"""Compare stream_lstm (Cython, nogil) with fastrnn's Python API; build it first (setup.py)."""
import numpy as np

import fastrnn
import stream_lstm

fastrnn.set_num_threads(1)  # parallelism comes from the streams
lstm = fastrnn.LSTM(16, 32, num_layers=2, rng=0).eval()
params = np.concatenate([p.ravel() for p in lstm.params.values()])
xs = np.random.default_rng(1).standard_normal((8, 50, 4, 16)).astype(np.float32)

ys, hs, cs = stream_lstm.lstm_forward_streams(params, xs, 32, num_layers=2, num_threads=4)
worst = max(np.abs(ys[s] - lstm(xs[s])[0]).max() for s in range(len(xs)))
print(f"8 streams on 4 threads: max |y_cython - y_python| = {worst:.2e}")
