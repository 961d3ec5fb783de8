"""video3d task."""
