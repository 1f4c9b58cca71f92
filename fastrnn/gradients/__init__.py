"""The gradient tools: initializers (`fastrnn.init`), gradient clipping (`fastrnn.clip`) and the
gradient diagnostics recorded inside BPTT (`fastrnn.diagnostics`). They build on the core only."""
