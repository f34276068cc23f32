"""Triton's KServe v2 protocol with the unchanged tritonclient.grpc as an external client."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from service_helpers import assert_healthy, drifting_grating, gabor_responses


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(server.address) as c:
        yield c


def test_server_and_model_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("gabor-small") and not client.is_model_ready("nope")
    metadata = client.get_server_metadata()
    assert metadata.name == "foveal" and "backend:torch" in metadata.extensions
    model = client.get_model_metadata("gabor-small")
    assert (model.name, list(model.versions), model.platform) == ("gabor-small", ["1"], "foveal")
    assert [(i.name, i.datatype, list(i.shape)) for i in model.inputs] == [
        ("images", "UINT8", [-1, 32, 32, 3])]
    assert [(o.name, list(o.shape)) for o in model.outputs] == [
        ("simple", [-1, 96, 6, 6]), ("energy", [-1, 48, 6, 6])]
    video = client.get_model_metadata("motion")
    assert [(i.name, list(i.shape)) for i in video.inputs] == [("clips", [-1, 8, -1, -1, 3])]


def test_model_config_and_repository_index(client):
    config = client.get_model_config("gabor").config
    assert config.max_batch_size == 4
    assert config.dynamic_batching.max_queue_delay_microseconds == 20_000
    assert config.input[0].name == "images" and list(config.input[0].dims) == [-1, -1, 3]
    assert config.parameters["compute_backend"].string_value == "torch"
    index = client.get_model_repository_index()
    assert {(m.name, m.state) for m in index.models} == {
        ("gabor", "READY"), ("gabor-small", "READY"), ("motion", "READY")}


def test_infer_with_raw_contents_and_as_numpy(client):
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    before = client.get_inference_statistics("gabor-small").model_stats[0].inference_count
    tensor = triton.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    result = client.infer("gabor-small", [tensor], request_id="req-1",
                          outputs=[triton.InferRequestedOutput("simple")])
    simple = result.as_numpy("simple")
    assert simple.shape == (3, 96, 6, 6) and simple.dtype == np.float32
    np.testing.assert_allclose(simple, np.maximum(gabor_responses(images), 0), atol=1e-4,
                               rtol=1e-4)
    assert result.get_response().id == "req-1"
    after = client.get_inference_statistics("gabor-small").model_stats[0]
    assert after.inference_count == before + 3 and after.execution_count >= 1


def test_infer_float32_input_every_output_and_fp16(client):
    """KServe v2: a request that names no outputs gets all of the model's outputs."""
    pixels = np.random.default_rng(1).random((1, 32, 32, 3), dtype=np.float32)
    tensor = triton.InferInput("images", [1, 32, 32, 3], "FP32")
    tensor.set_data_from_numpy(pixels)
    full = client.infer("gabor-small", [tensor])
    assert [o.name for o in full.get_response().outputs] == ["simple", "energy"]
    z = gabor_responses(pixels)  # in float64, independent of the server
    np.testing.assert_allclose(full.as_numpy("simple"), np.maximum(z, 0), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(full.as_numpy("energy"), np.hypot(z[:, 0::2], z[:, 1::2]),
                               atol=1e-4, rtol=1e-4)
    half = client.infer("gabor-small", [tensor], parameters={"output_datatype": "FP16"})
    assert half.as_numpy("simple").dtype == np.float16
    np.testing.assert_allclose(half.as_numpy("simple").astype(np.float32),
                               full.as_numpy("simple"), rtol=2e-3, atol=2e-3)


def test_infer_video_model(client):
    clips = np.stack([drifting_grating(0, 4.0, 8, 24), drifting_grating(180, 4.0, 8, 24)])
    tensor = triton.InferInput("clips", list(clips.shape), "UINT8")
    tensor.set_data_from_numpy(clips)
    opponent = client.infer("motion", [tensor], outputs=[
        triton.InferRequestedOutput("opponent")]).as_numpy("opponent")
    assert opponent.shape == (2, 8, 2, 4, 4)
    assert opponent[0, 0].mean() > 0 > opponent[1, 0].mean()  # rightward vs leftward


@pytest.mark.parametrize("name,datatype,shape,message", [
    ("images", "INT32", [1, 32, 32, 3], "dtype 'INT32' is not accepted"),
    ("pixels", "UINT8", [1, 32, 32, 3], "unknown input 'pixels'; model 'gabor-small' takes "
                                        "'images'"),
    ("images", "UINT8", [32, 32, 3], "shape must be (N, H, W, C)"),
    ("images", "UINT8", [5, 32, 32, 3], "5 items in one request"),
])
def test_bad_infer_requests(client, channel, name, datatype, shape, message):
    tensor = triton.InferInput(name, shape, datatype)
    tensor.set_data_from_numpy(np.zeros(shape, dtype=triton_np_dtype(datatype)))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("gabor-small", [tensor])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in caught.value.message()
    assert_healthy(channel)


def triton_np_dtype(datatype: str):
    return {"UINT8": np.uint8, "INT32": np.int32, "FP32": np.float32}[datatype]


def test_bad_requests_for_models_and_parameters(client):
    tensor = triton.InferInput("images", [1, 32, 32, 3], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("nope", [tensor])
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as caught:
        client.infer("gabor-small", [tensor], model_version="2")
    assert "has no version '2'" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.infer("gabor-small", [tensor], parameters={"output_datatype": "INT8"})
    assert "must be the string FP32, FP16 or BF16, got 'INT8'" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_config("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def test_stream_infer_answers_every_request_and_reports_errors_in_band(client):
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(3):
            tensor = triton.InferInput("images", [1, 32, 32, 3], "UINT8")
            tensor.set_data_from_numpy(np.full((1, 32, 32, 3), 40 * i, np.uint8))
            client.async_stream_infer("gabor-small", [tensor], request_id=f"s{i}")
        bad = triton.InferInput("images", [1, 32, 32, 4], "UINT8")
        bad.set_data_from_numpy(np.zeros((1, 32, 32, 4), np.uint8))
        client.async_stream_infer("gabor-small", [bad], request_id="bad")
        answers = [results.get(timeout=30) for _ in range(4)]
    finally:
        client.stop_stream()
    ok = {r.get_response().id: r for r, e in answers if e is None}
    errors = [e for _, e in answers if e is not None]
    assert set(ok) == {"s0", "s1", "s2"}
    assert ok["s1"].as_numpy("simple").shape == (1, 96, 6, 6)
    assert [o.name for o in ok["s1"].get_response().outputs] == ["simple", "energy"]
    assert len(errors) == 1 and "has 4 channels" in errors[0].message()
