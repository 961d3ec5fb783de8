"""Trust: a checkpoint is untrusted input. :mod:`.untrusted` loads it with ``weights_only=True``;
:mod:`.checkpoint` rebuilds only registered task classes from it, through the one build path."""
