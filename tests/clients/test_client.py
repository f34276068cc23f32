"""FoveaClient against a real server on a loopback port: every image form, clip streaming,
errors with their gRPC codes, and the client-side argument rules."""

from __future__ import annotations

import io
import threading

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from clients_helpers import raw_clip_features, raw_features
from foveal.clients.client import ClipFeatures, FoveaClient, FoveaError
from foveal.clients.video import VideoReadError, read_clips
from synthetic_video import drifting_grating, write_video


def _image(seed: int, size=(32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_list_and_describe_models(client):
    assert {m.name for m in client.list_models()} == {"motion", "gabor"}
    motion = client.describe("motion")
    assert (motion.kind, motion.frames, motion.height, motion.width) == ("video", 8, 24, 24)
    assert motion.default_outputs == ("energy",) and motion.outputs["energy"] == (16, 2, 4, 4)
    assert client.describe("gabor").max_batch_size == 3 and motion.backend == "torch"


def test_every_image_form_gives_the_features_of_the_same_pixels(client, channel, tmp_path):
    pixels = _image(1)
    expected = raw_features(channel, "gabor", pixels)
    path = tmp_path / "one.png"
    path.write_bytes(_png(pixels))
    forms = {"path": path, "str path": str(path), "bytes": _png(pixels), "numpy": pixels,
             "PIL": Image.fromarray(pixels),
             "PIL RGBA": Image.fromarray(pixels).convert("RGBA"),
             "torch uint8 CHW": torch.from_numpy(pixels).permute(2, 0, 1),
             "torch float CHW": torch.from_numpy(pixels).permute(2, 0, 1).float() / 255,
             "numpy float": pixels.astype(np.float32) / 255}
    for name, image in forms.items():
        features = client.extract_image(image, "gabor")
        assert list(features) == ["simple"], name
        assert isinstance(features["simple"], np.ndarray) and features["simple"].dtype == np.float32
        np.testing.assert_allclose(features["simple"], expected, rtol=1e-5, atol=1e-5,
                                   err_msg=name)


def test_outputs_dtype_and_torch_results(client, channel):
    pixels = _image(2)
    expected = raw_features(channel, "gabor", pixels)
    both = client.extract_image(pixels, "gabor", ["energy", "simple"])
    assert list(both) == ["energy", "simple"] and both["energy"].shape == (48, 6, 6)
    np.testing.assert_array_equal(both["simple"], expected)
    half = client.extract_image(pixels, "gabor", output_dtype="float16")["simple"]
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), expected, rtol=1e-3, atol=1e-3)
    tensors = client.extract_image(pixels, "gabor", as_torch=True, output_dtype="bfloat16")
    assert tensors["simple"].dtype == torch.bfloat16
    torch.testing.assert_close(tensors["simple"].float(), torch.from_numpy(expected),
                               rtol=1e-2, atol=1e-2)


def test_many_images_come_back_in_order_across_requests(client, channel):
    images = [_image(10 + i, (32 + i, 30)) for i in range(8)]  # 8 > max_batch_size 3
    results = FoveaClient(client.connection.address, requests_in_flight=2).extract_images(
        images, "gabor")
    assert len(results) == 8
    for image, result in zip(images, results, strict=True):
        np.testing.assert_allclose(result["simple"], raw_features(channel, "gabor", image),
                                   rtol=1e-5, atol=1e-5)


def _clips(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (8, 24, 24, 3), dtype=np.uint8) for _ in range(count)]


def test_stream_clips_in_small_chunks_matches_a_hand_built_stream(server, channel):
    clips = _clips(5)
    expected = raw_clip_features(channel, "motion", clips)
    with FoveaClient(server.address, chunk_bytes=1000, clips_in_flight=2) as small:
        results = list(small.stream_clips(clips, "motion"))
    assert [item is clip for (item, _), clip in zip(results, clips, strict=True)] == [True] * 5
    for (_, features), reference in zip(results, expected, strict=True):
        np.testing.assert_array_equal(features["energy"], reference)


def test_clip_features_arrive_while_later_clips_are_still_unread(server):
    pulled = []

    def source():
        for i, clip in enumerate(_clips(8)):
            pulled.append(i)
            yield clip

    with FoveaClient(server.address, clips_in_flight=2) as c:
        stream = c.stream_clips(source(), "motion")
        next(stream)
        assert len(pulled) <= 4  # the window (2) plus what the sender had begun, not all 8
        assert len(list(stream)) == 7
    assert len(pulled) == 8


def test_extract_clips_from_a_video(client, channel, videos):
    grating = videos[0]  # 30 frames at 25 fps
    results = list(client.extract_clips(grating, "motion", stride=4))
    assert [r.index for r in results] == list(range(6))  # (30 - 8) // 4 + 1
    assert all(isinstance(r, ClipFeatures) for r in results)
    np.testing.assert_allclose(results[1].timestamps, np.arange(4, 12) / 25)
    frames = [c.frames for c in read_clips(grating, 8, 4, size=(24, 24))]
    for result, reference in zip(results, raw_clip_features(channel, "motion", frames),
                                 strict=True):
        np.testing.assert_array_equal(result.features["energy"], reference)
    resampled = list(client.extract_clips(grating, "motion", fps=12.5))
    assert len(resampled) == 1 and resampled[0].timestamps[1] == pytest.approx(0.08)


def test_a_corrupt_video_raises_after_the_clips_before_the_damage(client, tmp_path):
    path = write_video(tmp_path / "cut.mkv", drifting_grating(100, 32, 48), fps=25)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    seen = []
    with pytest.raises(VideoReadError, match=r"cut.mkv: truncated or corrupt"):
        for clip in client.extract_clips(path, "motion"):
            seen.append(clip.index)
    assert seen == list(range(len(seen))) and seen  # some clips before the error


@pytest.mark.parametrize("call,code,message", [
    (lambda c: c.describe("nope"), "NOT_FOUND", "model 'nope' is not served here"),
    (lambda c: c.extract_image(b"not an image at all", "gabor"), "INVALID_ARGUMENT",
     "not a decodable JPEG or PNG"),
    (lambda c: c.extract_image(np.zeros((32, 32, 4), np.uint8), "gabor"), "INVALID_ARGUMENT",
     "has 4 channels"),
    (lambda c: c.extract_image(np.zeros((32, 32, 3), np.uint8), "gabor", ["bogus"]),
     "INVALID_ARGUMENT", r"unknown output\(s\) \['bogus'\]"),
    (lambda c: list(c.stream_clips([np.zeros((5, 24, 24, 3), np.uint8)], "motion")),
     "INVALID_ARGUMENT", "clip 0: too few frames"),
    (lambda c: list(c.stream_clips([np.zeros((8, 24, 24, 3), np.uint8)], "gabor")),
     "INVALID_ARGUMENT", "takes image input"),
])
def test_server_errors_carry_the_grpc_code_and_message(client, call, code, message):
    with pytest.raises(FoveaError, match=message) as caught:
        call(client)
    assert caught.value.code == getattr(grpc.StatusCode, code)
    assert caught.value.attempts == 1  # only UNAVAILABLE is retried
    assert code in str(caught.value)


def test_deadline_exceeded(server):
    with FoveaClient(server.address) as c:
        with pytest.raises(FoveaError) as caught:
            list(c.stream_clips(_clips(40), "motion", timeout=0.01))
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(FoveaError) as caught:
            c.extract_image(_image(3), "gabor", timeout=1e-4)
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_compression_gives_the_same_features(server, channel):
    pixels = _image(4)
    with FoveaClient(server.address, compression="gzip") as c:
        np.testing.assert_array_equal(c.extract_image(pixels, "gabor")["simple"],
                                      raw_features(channel, "gabor", pixels))
        (_, features), = c.stream_clips(_clips(1), "motion")
    np.testing.assert_array_equal(features["energy"],
                                  raw_clip_features(channel, "motion", _clips(1))[0])


def test_message_limit_is_checked_before_sending(server):
    with FoveaClient(server.address, max_message_bytes=256 * 1024) as c:
        big = np.zeros((300, 300, 3), np.uint8)  # 270 KB raw
        with pytest.raises(ValueError, match=r"over the 0\.2 MiB message limit"):
            c.extract_image(big, "gabor")
        with pytest.raises(ValueError, match=r"images\[1\] is \d+ bytes, over the message "
                                             r"limit"):
            c.extract_images([_image(5), big], "gabor")


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(timeout=0), ValueError, "timeout must be a positive number"),
    (dict(compression="zstd"), ValueError, "compression must be one of"),
    (dict(chunk_bytes=0), ValueError, "chunk_bytes must be an int from 1"),
    (dict(max_message_bytes=1000), ValueError, "max_message_bytes must be an int >= "),
    (dict(clips_in_flight=0), ValueError, "clips_in_flight must be a positive int"),
    (dict(root_certificates=b"x"), ValueError, "need tls=True"),
    (dict(tls=True, private_key=b"k"), ValueError, "needs both certificate_chain"),
    (dict(retry="often"), TypeError, "retry must be a RetryPolicy"),
])
def test_bad_client_settings(kwargs, error, message):
    with pytest.raises(error, match=message):
        FoveaClient("127.0.0.1:1", **kwargs)


@pytest.mark.parametrize("call,error,message", [
    (lambda c: c.extract_image(np.zeros((32, 32), np.uint8), "gabor"), ValueError,
     r"must be \(height, width, channels\)"),
    (lambda c: c.extract_image(np.zeros((32, 32, 3), np.int32), "gabor"), TypeError,
     "pixels must be uint8"),
    (lambda c: c.extract_image(42, "gabor"), TypeError, "expected a path, JPEG/PNG bytes"),
    (lambda c: c.extract_image(torch.zeros(32, 32), "gabor"), ValueError,
     r"must be \(channels, height, width\)"),
    (lambda c: c.extract_image(b"", "gabor"), ValueError, "empty image bytes"),
    (lambda c: c.extract_image(_image(0), "gabor", output_dtype="int8"), ValueError,
     "output_dtype must be one of"),
    (lambda c: c.extract_image(_image(0), "gabor", outputs="simple"), TypeError,
     "outputs must be a list"),
    (lambda c: c.extract_images(_image(0), "gabor"), TypeError, "images must be a list"),
    (lambda c: list(c.extract_clips("x.mp4", "motion", clip_len=4)), ValueError,
     r"clip_len must be 8 for model 'motion'"),
    (lambda c: list(c.extract_clips("x.mp4", "gabor")), ValueError,
     "model 'gabor' takes images, not video clips"),
    (lambda c: list(c.stream_clips([np.zeros((24, 24, 3), np.uint8)], "motion")), ValueError,
     r"clip 0: frames must be a numpy array \(frames, height, width, channels\)"),
])
def test_bad_call_arguments(client, call, error, message):
    with pytest.raises(error, match=message):
        call(client)


def test_stopping_early_cancels_the_stream(server):
    with FoveaClient(server.address, clips_in_flight=2) as c:
        stream = c.stream_clips(_clips(6), "motion")
        next(stream)
        stream.close()
        assert c.extract_image(_image(6), "gabor")["simple"].shape == (96, 6, 6)


def test_client_is_thread_safe(client, channel):
    images = [_image(20 + i) for i in range(6)]
    results: dict[int, np.ndarray] = {}

    def work(i):
        results[i] = client.extract_image(images[i], "gabor")["simple"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for i, image in enumerate(images):
        np.testing.assert_allclose(results[i], raw_features(channel, "gabor", image),
                                   rtol=1e-5, atol=1e-5)
