"""The synthetic videos of foveal.bench, importable in tests as `synthetic_video`."""

from foveal.bench.synthetic_video import (
    drifting_grating,
    frame_index_video,
    moving_square,
    write_video,
)

__all__ = ["drifting_grating", "frame_index_video", "moving_square", "write_video"]
