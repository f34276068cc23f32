"""foveal.service."""
