"""foveal.v1.FeatureService over a real loopback connection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from foveal.proto.foveal.v1 import foveal_pb2 as pb
from foveal.service.models import gabor as gabor_module
from service_helpers import drifting_grating, encode, grating, labels, raw_image, to_numpy


def test_list_and_get_models_describe_inputs_outputs_and_backend(features):
    listed = {m.name: m for m in features.ListModels(pb.ListModelsRequest()).models}
    assert set(listed) == {"gabor", "gabor-small", "motion"}
    gabor = features.GetModel(pb.GetModelRequest(name="gabor"))
    assert gabor == listed["gabor"]
    assert (gabor.kind, gabor.backend, gabor.device, gabor.weights) == (
        "gabor", "torch", "cpu", "analytic")
    assert (gabor.input.height, gabor.input.width, gabor.input.channels) == (227, 227, 3)
    assert gabor.precision == pb.DATA_TYPE_FLOAT32 and gabor.ready
    outputs = {o.name: o for o in gabor.outputs}
    assert list(outputs["simple"].shape) == [96, 55, 55] and outputs["simple"].is_default
    assert list(outputs["energy"].shape) == [48, 55, 55] and len(outputs["energy"].channels) == 48
    assert gabor.batching.max_batch_size == 4 and gabor.batching.max_queue_delay_ms == 20
    motion = listed["motion"]
    assert motion.input.kind == pb.INPUT_KIND_VIDEO and motion.input.frames == 8
    assert list(motion.outputs[0].shape) == [16, 2, 4, 4]


def test_oriented_gratings_as_png_excite_their_orientation_channel(features):
    orientations = [0.0, 45.0, 90.0, 135.0]
    images = [pb.Image(encoded=encode(grating(o, 5.0, 227))) for o in orientations]
    reply = features.ExtractImage(pb.ExtractImageRequest(model="gabor", images=images,
                                                         outputs=["energy"]), timeout=60)
    energy_labels = {o.name: o for o in features.GetModel(
        pb.GetModelRequest(name="gabor")).outputs}["energy"].channels
    for orientation, image in zip(orientations, reply.images, strict=True):
        (energy,) = image.features
        assert energy.name == "energy" and list(energy.tensor.shape) == [48, 55, 55]
        best = labels(energy_labels[int(to_numpy(energy.tensor).mean(axis=(1, 2)).argmax())])
        assert (best["pathway"], float(best["orientation"])) == ("luminance", orientation)


def test_raw_pixels_give_the_filter_banks_responses(features):
    """Compared with the analytic bank convolved in float64, outside the server."""
    rng = np.random.default_rng(0)
    pixels = rng.random((32, 32, 3), dtype=np.float32)
    reply = features.ExtractImage(pb.ExtractImageRequest(
        model="gabor-small", images=[raw_image(pixels)], outputs=["simple", "energy"]))
    bank, _ = gabor_module.filter_bank()
    x = ((torch.from_numpy(pixels).double() - 0.5) / 0.25).permute(2, 0, 1)[None]
    z = F.conv2d(x, bank, stride=4)[0]
    got = {f.name: to_numpy(f.tensor) for f in reply.images[0].features}
    np.testing.assert_allclose(got["simple"], F.relu(z).numpy(), atol=1e-4, rtol=1e-4)
    energy = (z[0::2] ** 2 + z[1::2] ** 2).sqrt().numpy()
    np.testing.assert_allclose(got["energy"], energy, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype,tolerance", [(pb.DATA_TYPE_FLOAT16, 2e-3),
                                             (pb.DATA_TYPE_BFLOAT16, 1e-2)])
def test_features_in_half_precision_on_request(features, dtype, tolerance):
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    request = pb.ExtractImageRequest(model="gabor-small", images=[raw_image(pixels)])
    full = to_numpy(features.ExtractImage(request).images[0].features[0].tensor)
    request.output_dtype = dtype
    half = features.ExtractImage(request).images[0].features[0].tensor
    assert half.dtype == dtype and len(half.data) == full.size * 2
    np.testing.assert_allclose(to_numpy(half), full, atol=tolerance * np.abs(full).max(),
                               rtol=tolerance)


def test_jpeg_of_any_size_is_resized_to_the_models_input(features):
    photo = np.random.default_rng(2).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    reply = features.ExtractImage(pb.ExtractImageRequest(
        model="gabor", images=[pb.Image(encoded=encode(photo, "JPEG", quality=90))]))
    assert list(reply.images[0].features[0].tensor.shape) == [96, 55, 55]


def _clip_chunks(clips: list[tuple[str, np.ndarray]], chunk_bytes: int, model: str = "motion"):
    for clip_id, frames in clips:
        data = frames.tobytes()
        yield pb.ClipChunk(header=pb.ClipHeader(model=model, shape=list(frames.shape),
                                                dtype=pb.DATA_TYPE_UINT8, clip_id=clip_id),
                           data=data[:chunk_bytes])
        for start in range(chunk_bytes, len(data), chunk_bytes):
            yield pb.ClipChunk(data=data[start:start + chunk_bytes])


def test_clips_stream_in_chunks_and_answer_in_order_with_direction_selectivity(features):
    clips = [(name, drifting_grating(direction, 4.0, 8, 24))
             for name, direction in (("right", 0), ("left", 180), ("up", 90))]
    replies = list(features.ExtractClips(_clip_chunks(clips, chunk_bytes=1000), timeout=60))
    assert [(r.clip_id, r.index, r.model) for r in replies] == [
        ("right", 0, "motion"), ("left", 1, "motion"), ("up", 2, "motion")]
    channels = [labels(c) for c in features.GetModel(
        pb.GetModelRequest(name="motion")).outputs[0].channels]

    def energy(reply, direction):
        maps = to_numpy(reply.features[0].tensor).mean(axis=(1, 2, 3))
        return next(float(e) for e, c in zip(maps, channels, strict=True)
                    if c["direction"] == direction and c["wavelength"] == "4")

    right, left, up = replies
    assert energy(right, "0") > 10 * energy(right, "180")
    assert energy(left, "180") > 10 * energy(left, "0")
    assert energy(up, "90") > 10 * energy(up, "270")


def test_clip_opponent_output_is_signed_by_direction(features):
    clip = [("right", drifting_grating(0, 4.0, 8, 24))]
    chunks = list(_clip_chunks(clip, chunk_bytes=10**6))
    chunks[0].header.outputs[:] = ["opponent"]
    (reply,) = features.ExtractClips(iter(chunks), timeout=60)
    opponent = to_numpy(reply.features[0].tensor).mean(axis=(1, 2, 3))
    assert reply.features[0].name == "opponent" and opponent[0] > 0  # direction=0 minus 180
