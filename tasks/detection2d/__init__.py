"""detection2d task."""
