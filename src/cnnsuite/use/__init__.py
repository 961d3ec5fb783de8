"""Use of a trained checkpoint: evaluate, predict, export, serve and inspect. Each command
rebuilds its model through :mod:`cnnsuite.trust.checkpoint` and learns about the task only
through the task contract (:mod:`cnnsuite.contract`, :mod:`.inspectable`)."""
