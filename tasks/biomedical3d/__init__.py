"""biomedical3d task."""
