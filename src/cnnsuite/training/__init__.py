"""Training: the task base classes (:mod:`.task`, :mod:`.classification`), their heads, the
callbacks, fine-tuning schedules and weight transfer a config names, and the run folder
(:mod:`.runs`: versions, loggers, atomic checkpoints) every ``fit`` writes."""
