"""The training toolkit: `fastrnn.Linear` / `LastStep` / `Sequential` (`fastrnn.modules`),
`fastrnn.losses`, `fastrnn.optim`, `fastrnn.fit` and `History` (`fastrnn.training`),
`fastrnn.callbacks`, the synthetic tasks (`fastrnn.tasks`) and the demo (`fastrnn.demo`). It builds
on the core and the gradient tools."""
