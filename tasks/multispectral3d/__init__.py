"""multispectral3d task."""
