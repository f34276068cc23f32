"""foveal.proto."""
