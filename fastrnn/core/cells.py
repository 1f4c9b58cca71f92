"""The cell table as the Python package sees it: csrc/cells/table.h, read through ``fastrnn._C``.

Every Python module that needs a cell's code, gate count, gate names, saturation statistics or
the variants it takes asks here; none spells them out itself.

Examples
--------
>>> from fastrnn.core import cells as _cells
>>> _cells.info("lstm").gates, _cells.info("gru", reset_after=False).saturation
(4, ('reset', 'update', 'new'))
>>> _cells.info("ligru").gate_names, _cells.names()[:4]
(('candidate', 'update'), ('rnn_tanh', 'rnn_relu', 'lstm', 'gru'))
"""
from __future__ import annotations

from typing import NamedTuple

from .. import _C


class CellInfo(NamedTuple):
    name: str
    code: int
    reset_after: bool
    gates: int
    gate_names: tuple
    has_c: bool
    saturation: tuple
    saturation_kinds: tuple
    variants: dict


_ROWS = [CellInfo(**row) for row in _C.cells()]
_BY_KEY = {(r.name, r.reset_after): r for r in _ROWS}

# Li-GRU's candidate activations and input normalizations, as the core numbers them.
ACTIVATIONS = {"relu": 0, "tanh": 1, "sin": 2, "leaky_relu": 3}
NORMALIZATIONS = {None: 0, "batchnorm": 1, "layernorm": 2}


# How the messages name the cells and the variants.
_DISPLAY = {"rnn_tanh": "RNN", "rnn_relu": "RNN", "lstm": "LSTM", "gru": "GRU", "ligru": "Li-GRU", "sligru": "SLi-GRU"}
_VARIANT_DISPLAY = {"zoneout_h": "zoneout"}


def variant_rule(variant):
    """Which cells take a variant, from the table: "proj_size is for LSTM only"."""
    takers = []
    for row in _ROWS:
        if row.variants[variant]:
            shown = _DISPLAY.get(row.name, row.name)
            if row.name == "gru" and not all(r.variants[variant] for r in _ROWS if r.name == "gru"):
                shown += f" with reset_after={row.reset_after}"
            if shown not in takers:
                takers.append(shown)
    name = _VARIANT_DISPLAY.get(variant, variant)
    if len(takers) == 1:
        return f"{name} is for {takers[0]} only"
    return f"{name} is for {', '.join(takers[:-1])} and {takers[-1]}"


def names():
    """Cell names in the table's order (GRU once)."""
    return tuple(dict.fromkeys(r.name for r in _ROWS))


def info(cell, reset_after=True):
    """The table row of `cell` ("rnn_tanh", "rnn_relu", "lstm", "gru", "ligru", "sligru"); GRU's
    two forms differ by `reset_after`. KeyError for an unknown cell."""
    row = _BY_KEY.get((cell, bool(reset_after) if cell == "gru" else True))
    if row is None:
        raise KeyError(f"unknown cell {cell!r}; expected one of {', '.join(map(repr, names()))}")
    return row


def code(cell):
    return info(cell).code


def gates(cell):
    return info(cell).gates
