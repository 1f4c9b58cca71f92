"""The recurrent core: the layers (`fastrnn.LSTM`, ...), the functional forward and backward
(`fastrnn.functional`), the cell table as Python sees it, input validation, the float64
reference, the CUDA backend's front (`fastrnn.cuda`) and the callback protocol of training loops.

Everything public here is imported from its usual place: `fastrnn.LSTM`, `fastrnn.functional`,
`fastrnn.cuda` (docs/design.md, "Architecture").
"""
