"""foveal.clients."""
