"""What a client needs to know about a model, whether served remotely or run in-process."""

from __future__ import annotations

from dataclasses import dataclass

from foveal.proto.foveal.v1 import foveal_pb2 as pb

IMAGE, VIDEO = "image", "video"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str                          # "image" or "video"
    height: int                        # 0: any size
    width: int
    frames: int                        # clip length for video models, else 0
    resize: bool                       # other sizes are resized (else rejected)
    outputs: dict[str, tuple[int, ...]]  # per-item output shapes (-1: depends on the input)
    default_outputs: tuple[str, ...]
    max_batch_size: int
    backend: str                       # "triton", "interpreter" or "torch"
    device: str

    @classmethod
    def from_proto(cls, info: pb.ModelInfo) -> ModelSpec:
        return cls(name=info.name,
                   kind=VIDEO if info.input.kind == pb.INPUT_KIND_VIDEO else IMAGE,
                   height=info.input.height, width=info.input.width, frames=info.input.frames,
                   resize=info.input.resize,
                   outputs={o.name: tuple(o.shape) for o in info.outputs},
                   default_outputs=tuple(o.name for o in info.outputs if o.is_default),
                   max_batch_size=info.batching.max_batch_size or 1, backend=info.backend,
                   device=info.device)

    def frame_size(self) -> tuple[int, int] | None:
        """(height, width) to decode video frames at: the model's own size when it resizes
        anyway (fewer bytes to send, identical in every mode), else None (the file's size)."""
        if self.height > 0 and self.width > 0 and self.resize:
            return (self.height, self.width)
        return None

    def clip_length(self, clip_len: int | None) -> int:
        """The clip length to use: the model's, which is the only one it accepts."""
        if self.kind != VIDEO:
            raise ValueError(f"model {self.name!r} takes images, not video clips")
        if clip_len is None:
            return self.frames
        if type(clip_len) is not int or clip_len < 1:
            raise ValueError(f"clip_len must be a positive int, got {clip_len!r}")
        if self.frames and clip_len != self.frames:
            raise ValueError(f"clip_len must be {self.frames} for model {self.name!r} (it "
                             f"takes clips of exactly {self.frames} frames), got {clip_len}")
        return clip_len

    def check_outputs(self, outputs: list[str]) -> tuple[str, ...]:
        """The layers a request returns, in order: those named, or the model's defaults."""
        unknown = [name for name in outputs if name not in self.outputs]
        if unknown:
            raise ValueError(f"unknown output(s) {unknown} for model {self.name!r}; it has "
                             f"{list(self.outputs)}")
        return tuple(outputs) or self.default_outputs
