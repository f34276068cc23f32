"""Every kind of bad input gets the right status and a message naming the problem, over a real
connection, and the server stays healthy afterwards."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from foveal.proto.foveal.v1 import foveal_pb2 as pb
from service_helpers import MAX_MESSAGE, assert_healthy, encode, raw_image

INVALID = grpc.StatusCode.INVALID_ARGUMENT
GREY = np.full((32, 32, 3), 128, np.uint8)
PNG = encode(GREY)


def _tensor(shape, dtype=pb.DATA_TYPE_UINT8, data=None):
    size = int(np.prod(shape)) * (4 if dtype == pb.DATA_TYPE_FLOAT32 else 1)
    return pb.Image(pixels=pb.Tensor(shape=shape, dtype=dtype,
                                     data=bytes(size) if data is None else data))


def _gif() -> bytes:
    return encode(GREY, "GIF")


IMAGE_CASES = {
    "unknown model": (pb.ExtractImageRequest(model="resnet9000", images=[pb.Image(encoded=PNG)]),
                      grpc.StatusCode.NOT_FOUND, "'resnet9000' is not served"),
    "missing model": (pb.ExtractImageRequest(images=[pb.Image(encoded=PNG)]), INVALID,
                      "model is required"),
    "no images": (pb.ExtractImageRequest(model="gabor-small"), INVALID,
                  "at least one image is required"),
    "image without source": (pb.ExtractImageRequest(model="gabor-small", images=[pb.Image()]),
                             INVALID, "images[0]: set either encoded"),
    "empty bytes": (pb.ExtractImageRequest(model="gabor-small",
                                           images=[pb.Image(encoded=b"")]),
                    INVALID, "images[0]: empty image bytes"),
    "corrupt bytes": (pb.ExtractImageRequest(model="gabor-small", images=[
        pb.Image(encoded=PNG), pb.Image(encoded=b"\x89PNG not really an image")]),
        INVALID, "images[1]: not a decodable JPEG or PNG"),
    "truncated png": (pb.ExtractImageRequest(model="gabor-small", images=[
        pb.Image(encoded=encode(np.random.default_rng(0).integers(0, 255, (32, 32, 3),
                                                                  dtype=np.uint8))[:200])]),
        INVALID, "images[0]: corrupt image data"),
    "gif": (pb.ExtractImageRequest(model="gabor-small", images=[pb.Image(encoded=_gif())]),
            INVALID, "not a JPEG or PNG image (found GIF)"),
    "wrong dtype": (pb.ExtractImageRequest(model="gabor-small", images=[
        _tensor([32, 32, 3], pb.DATA_TYPE_FLOAT16, bytes(32 * 32 * 3 * 2))]),
        INVALID, "dtype DATA_TYPE_FLOAT16 is not accepted"),
    "missing dtype": (pb.ExtractImageRequest(model="gabor-small", images=[
        _tensor([32, 32, 3], pb.DATA_TYPE_UNSPECIFIED, bytes(32 * 32 * 3))]),
        INVALID, "dtype DATA_TYPE_UNSPECIFIED is not accepted"),
    "wrong rank": (pb.ExtractImageRequest(model="gabor-small", images=[_tensor([32, 96])]),
                   INVALID, "must be 3-D (height, width, channels)"),
    "missing shape": (pb.ExtractImageRequest(model="gabor-small", images=[_tensor([])]),
                      INVALID, "shape is required"),
    "bytes disagree with shape": (pb.ExtractImageRequest(model="gabor-small", images=[
        _tensor([32, 32, 3], data=bytes(100))]), INVALID,
        "100 bytes do not match shape [32, 32, 3] of uint8 (3072 bytes expected)"),
    "wrong channels": (pb.ExtractImageRequest(model="gabor-small", images=[_tensor([32, 32, 4])]),
                       INVALID, "has 4 channels"),
    "too many pixels": (pb.ExtractImageRequest(model="gabor-small", images=[
        pb.Image(encoded=encode(np.zeros((100, 100, 3), np.uint8)))]),
        INVALID, "100x100 is 10000 pixels; this model accepts at most 4096"),
    "wrong size without resize": (pb.ExtractImageRequest(model="gabor-small", images=[
        _tensor([32, 30, 3])]), INVALID, "size 32x30 does not match the model's 32x32"),
    "non-finite floats": (pb.ExtractImageRequest(model="gabor-small", images=[raw_image(
        np.full((32, 32, 3), np.nan, np.float32))]), INVALID, "must be finite"),
    "too large batch": (pb.ExtractImageRequest(model="gabor-small",
                                               images=[pb.Image(encoded=PNG)] * 5),
                        INVALID, "5 items in one request; model 'gabor-small' takes at most 4"),
    "unknown output": (pb.ExtractImageRequest(model="gabor-small", images=[pb.Image(encoded=PNG)],
                                              outputs=["edges"]),
                       INVALID, "unknown output(s) ['edges']"),
    "integer output dtype": (pb.ExtractImageRequest(
        model="gabor-small", images=[pb.Image(encoded=PNG)], output_dtype=pb.DATA_TYPE_UINT8),
        INVALID, "output_dtype must be FLOAT32, FLOAT16 or BFLOAT16"),
    "image to a video model": (pb.ExtractImageRequest(model="motion",
                                                      images=[pb.Image(encoded=PNG)]),
                               INVALID, "takes video input, not image"),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_bad_image_requests(features, channel, case):
    request, code, message = IMAGE_CASES[case]
    with pytest.raises(grpc.RpcError) as caught:
        features.ExtractImage(request, timeout=30)
    assert caught.value.code() == code
    assert message in caught.value.details()
    assert_healthy(channel)


def test_unknown_model_in_get_model(features):
    with pytest.raises(grpc.RpcError) as caught:
        features.GetModel(pb.GetModelRequest(name="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "available: gabor, gabor-small, motion" in caught.value.details()


def test_oversize_message_is_refused_and_the_server_keeps_serving(features, channel):
    big = pb.ExtractImageRequest(model="gabor", images=[pb.Image(encoded=bytes(MAX_MESSAGE + 1))])
    with pytest.raises(grpc.RpcError) as caught:
        features.ExtractImage(big, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in caught.value.details()
    assert_healthy(channel)


CLIP = np.zeros((8, 24, 24, 3), np.uint8)


def _header(**overrides) -> pb.ClipHeader:
    values = {"model": "motion", "shape": [8, 24, 24, 3], "dtype": pb.DATA_TYPE_UINT8}
    return pb.ClipHeader(**{**values, **overrides})


CLIP_CASES = {
    "data before a header": ([pb.ClipChunk(data=b"1234")],
                             "clip 0: data arrived before a header"),
    "too many frames": ([pb.ClipChunk(header=_header(shape=[9, 24, 24, 3]))],
                        "clip 0: too many frames: 9; model 'motion' takes clips of exactly 8"),
    "too few frames": ([pb.ClipChunk(header=_header(shape=[7, 24, 24, 3]),
                                     data=bytes(7 * 24 * 24 * 3))],
                       "clip 0: too few frames: got 7"),
    "wrong rank": ([pb.ClipChunk(header=_header(shape=[8, 24, 24]))],
                   "shape must be 4 positive sizes"),
    "more bytes than the shape": ([pb.ClipChunk(header=_header(), data=CLIP.tobytes() + b"x")],
                                  f"received {CLIP.nbytes + 1} bytes but shape"),
    "stream ends mid-clip": ([pb.ClipChunk(header=_header(), data=CLIP.tobytes()[:1000])],
                             "clip 0: the stream ended after 1000 of its"),
    "new header mid-clip": ([pb.ClipChunk(header=_header(), data=b"12"),
                             pb.ClipChunk(header=_header())],
                            "clip 0: a new header arrived after 2 of its"),
    "video to an image model": ([pb.ClipChunk(header=_header(model="gabor"))],
                                "takes image input, not video"),
    "float16 frames": ([pb.ClipChunk(header=_header(dtype=pb.DATA_TYPE_FLOAT16))],
                       "clip 0: dtype DATA_TYPE_FLOAT16 is not accepted"),
    "a bad second clip": ([pb.ClipChunk(header=_header(), data=CLIP.tobytes()),
                           pb.ClipChunk(header=_header(outputs=["nope"]))],
                          "unknown output(s) ['nope']"),
}


@pytest.mark.parametrize("case", list(CLIP_CASES))
def test_bad_clip_streams(features, channel, case):
    chunks, message = CLIP_CASES[case]
    with pytest.raises(grpc.RpcError) as caught:
        list(features.ExtractClips(iter(chunks), timeout=30))
    assert caught.value.code() == INVALID
    assert message in caught.value.details()
    assert_healthy(channel)


def test_unknown_model_in_a_clip_stream(features):
    with pytest.raises(grpc.RpcError) as caught:
        list(features.ExtractClips(iter([pb.ClipChunk(header=_header(model="nope"))])))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
