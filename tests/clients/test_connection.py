"""Retries on UNAVAILABLE only (a server not up yet, one that goes away mid-stream, one that
never comes), TLS, bearer tokens, and the asyncio client."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import numpy as np
import pytest

from clients_helpers import free_port, raw_clip_features, raw_features, running, start_server
from foveal.clients.client import AsyncFoveaClient, FoveaClient, FoveaError, RetryPolicy
from pki import make_pki

FAST_RETRY = RetryPolicy(attempts=30, initial_backoff=0.05, max_backoff=0.2)


def _clips(count: int, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (8, 24, 24, 3), dtype=np.uint8) for _ in range(count)]


def test_a_server_that_is_not_up_yet_is_waited_for(models_file):
    port = free_port()
    servers = []
    starter = threading.Timer(0.5, lambda: servers.append(start_server(models_file, port=port)))
    started = time.monotonic()
    starter.start()
    try:
        with FoveaClient(f"127.0.0.1:{port}", retry=FAST_RETRY) as c:
            assert c.describe("gabor").name == "gabor"
            assert time.monotonic() - started >= 0.5  # it failed, backed off, and retried
    finally:
        starter.join()
        for s in servers:
            s.stop()


def test_no_server_fails_with_unavailable_after_the_attempts():
    retry = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.02)
    with FoveaClient(f"127.0.0.1:{free_port()}", retry=retry) as c:
        started = time.monotonic()
        with pytest.raises(FoveaError, match=r"UNAVAILABLE: .* \(after 3 attempts\)") as caught:
            c.list_models()
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE and caught.value.attempts == 3
        assert time.monotonic() - started < 5


def test_a_stream_resumes_on_a_restarted_server(models_file):
    """The server goes away after 3 clips; the stream resends the unanswered ones to the new
    server and every clip comes back once, in order, right."""
    port = free_port()
    clips = _clips(8)
    box = {"server": start_server(models_file, port=port, grace_seconds=0.0)}
    with grpc.insecure_channel(box["server"].address) as channel:
        expected = raw_clip_features(channel, "motion", clips)

    def slow():
        for clip in clips:
            time.sleep(0.03)
            yield clip

    restart = threading.Timer(0.3, lambda: box.update(server=start_server(models_file,
                                                                          port=port)))
    results = []
    try:
        with FoveaClient(f"127.0.0.1:{port}", retry=FAST_RETRY, clips_in_flight=2) as c:
            for i, (_, features) in enumerate(c.stream_clips(slow(), "motion")):
                results.append(features["energy"])
                if i == 2:
                    box["server"].stop(grace=0)
                    restart.start()
    finally:
        restart.join()
        box["server"].stop()
    assert len(results) == 8
    for got, reference in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, reference)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_and_mutual_tls(models_file, pki):
    files, paths = pki
    pixels = np.full((32, 32, 3), 90, np.uint8)
    with running(models_file, tls_cert=paths["server_cert"], tls_key=paths["server_key"],
                 tls_client_ca=paths["ca"]) as s:
        address = f"localhost:{s.port}"
        with FoveaClient(address, tls=True, root_certificates=paths["ca"],
                         certificate_chain=files["client_cert"],
                         private_key=paths["client_key"]) as c:
            features = c.extract_image(pixels, "gabor")["simple"]
            (_, clip), = c.stream_clips(_clips(1), "motion")
        assert features.shape == (96, 6, 6) and clip["energy"].shape == (16, 2, 4, 4)
        with FoveaClient(address, tls=True, root_certificates=files["ca"],
                         retry=RetryPolicy(attempts=1)) as no_client_cert, \
                pytest.raises(FoveaError) as caught:
            no_client_cert.list_models()
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def test_bearer_token(models_file):
    with running(models_file, auth_token="s3cret") as s:
        with FoveaClient(s.address) as anonymous, pytest.raises(FoveaError) as caught:
            anonymous.list_models()
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "bearer token" in caught.value.message
        with FoveaClient(s.address, token="s3cret") as c:
            assert {m.name for m in c.list_models()} == {"motion", "gabor"}


def test_async_client(server, channel):
    images = [np.random.default_rng(i).integers(0, 256, (32, 32, 3), np.uint8)
              for i in range(5)]
    clips = _clips(5, seed=9)

    async def main():
        async with AsyncFoveaClient(server.address, clips_in_flight=2,
                                    chunk_bytes=4096) as c:
            spec = await c.describe("motion")
            one = await c.extract_image(images[0], "gabor")
            many = await c.extract_images(images, "gabor")
            streamed = [f async for _, f in c.stream_clips(iter(clips), "motion")]
            with pytest.raises(FoveaError) as caught:
                await c.extract_image(b"garbage", "gabor")
            return spec, one, many, streamed, caught.value

    spec, one, many, streamed, error = asyncio.run(main())
    assert spec.frames == 8
    np.testing.assert_allclose(one["simple"], raw_features(channel, "gabor", images[0]),
                               rtol=1e-5, atol=1e-5)
    for image, features in zip(images, many, strict=True):
        np.testing.assert_allclose(features["simple"], raw_features(channel, "gabor", image),
                                   rtol=1e-5, atol=1e-5)
    for got, reference in zip(streamed, raw_clip_features(channel, "motion", clips),
                              strict=True):
        np.testing.assert_array_equal(got["energy"], reference)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT


def test_async_extract_clips_from_a_video(server, videos, client):
    async def main():
        async with AsyncFoveaClient(server.address) as c:
            return [clip async for clip in c.extract_clips(videos[1], "motion", stride=8)]

    clips = asyncio.run(main())
    synced = list(client.extract_clips(videos[1], "motion", stride=8))
    assert [c.index for c in clips] == [c.index for c in synced] == list(range(5))
    for a, b in zip(clips, synced, strict=True):
        np.testing.assert_array_equal(a.features["energy"], b.features["energy"])
        np.testing.assert_array_equal(a.timestamps, b.timestamps)


@pytest.mark.parametrize("kwargs,message", [
    (dict(attempts=0), "attempts must be an int >= 1"),
    (dict(initial_backoff=-1), "initial_backoff must be a finite number >= 0"),
    (dict(multiplier=0.5), "multiplier must be >= 1"),
    (dict(jitter=1.0), r"jitter must be in \[0, 1\)"),
])
def test_bad_retry_policy(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)


def test_backoff_grows_exponentially_up_to_the_cap():
    policy = RetryPolicy(attempts=6, initial_backoff=0.1, multiplier=2, max_backoff=0.5,
                         jitter=0)
    assert [policy.delay(n) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    assert policy.should_retry(grpc.StatusCode.UNAVAILABLE, 5)
    assert not policy.should_retry(grpc.StatusCode.UNAVAILABLE, 6)
    assert policy.should_retry(grpc.StatusCode.CANCELLED, 1)  # dropped by a server stopping
    for code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
        assert not policy.should_retry(code, 1)
