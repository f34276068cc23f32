"""Several replicas behind one client: addresses, round-robin spreading, and failover (a replica
that dies mid-load loses no request and answers none twice)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from clients_helpers import load_output, raw_clip_features, raw_features, start_server
from foveal.bench.serve_load import spawn_servers
from foveal.clients import AsyncFoveaClient, FoveaClient, RetryPolicy
from foveal.clients.cli import main
from foveal.clients.replicas import parse_targets
from foveal.proto import rpc
from foveal.proto.inference import grpc_service_pb2 as inference_pb

FAST_RETRY = RetryPolicy(attempts=10, initial_backoff=0.05, max_backoff=0.5)


@pytest.mark.parametrize("address,targets", [
    ("127.0.0.1:8001", ("127.0.0.1:8001",)),
    (" a:1, b:2 ", ("a:1", "b:2")),
    (["a:1", "b:2,c:3"], ("a:1", "b:2", "c:3")),
    ("ipv4:127.0.0.1:8001,127.0.0.1:8003", ("ipv4:127.0.0.1:8001,127.0.0.1:8003",)),
    ("dns:///features.internal:8001", ("dns:///features.internal:8001",)),
    (("unix:/run/foveal.sock",), ("unix:/run/foveal.sock",)),
])
def test_an_address_names_one_target_or_several(address, targets):
    assert parse_targets(address) == targets


@pytest.mark.parametrize("address,message", [
    ("", "address must be 'host:port', a gRPC target or a list of them, got ''"),
    ([], "got []"),
    (42, "got 42"),
    (["a:1", 7], "got 7"),
    ("a:1,,b:2", "address 'a:1,,b:2': '' is not a 'host:port' address"),
    ("a :1", "'a :1' is not a 'host:port' address"),
    (["a:1", "b:2", "a:1"], "address names ['a:1'] more than once"),
])
def test_bad_addresses_are_named(address, message):
    with pytest.raises(ValueError) as caught:
        FoveaClient(address)
    assert message in str(caught.value)


@pytest.fixture(scope="module")
def pair(models_file):
    servers = [start_server(models_file) for _ in range(2)]
    yield servers
    for server in servers:
        server.stop(grace=0.5)


def _counts(address: str) -> dict[str, int]:
    """Items each model of the server at `address` has computed (its ModelStatistics)."""
    with grpc.insecure_channel(address) as channel:
        stats = rpc.InferenceServiceStub(channel).ModelStatistics(
            inference_pb.ModelStatisticsRequest(), timeout=10)
    return {s.name: s.inference_count for s in stats.model_stats}


def _wait_connected(client) -> None:
    """Until every replica's channel is ready, so that calls spread over all of them."""
    deadline = time.monotonic() + 10
    while len(client._replicas.ready()) < len(client._replicas.targets):
        assert time.monotonic() < deadline, "the replicas did not all connect"
        time.sleep(0.01)


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(count)]


def _clips(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (8, 24, 24, 3), dtype=np.uint8) for _ in range(count)]


@pytest.mark.parametrize("form", ["list", "commas", "ipv4 target"])
def test_calls_spread_over_every_replica(pair, form):
    a, b = (s.address for s in pair)
    address = {"list": [a, b], "commas": f"{a},{b}",
               "ipv4 target": f"ipv4:{a},{b}"}[form]
    images = _images(12)
    before = [_counts(s.address)["gabor"] for s in pair]
    with FoveaClient(address) as client:
        _wait_connected(client)
        results = [client.extract_image(image, "gabor")["simple"] for image in images]
    served = [_counts(s.address)["gabor"] - n for s, n in zip(pair, before, strict=True)]
    assert sum(served) == 12 and min(served) >= 2, served  # round-robin, not pick-first
    with grpc.insecure_channel(a) as channel:
        for image, got in zip(images, results, strict=True):
            np.testing.assert_array_equal(got, raw_features(channel, "gabor", image))


def test_the_async_client_spreads_and_streams_over_replicas(pair):
    images, clips = _images(8, seed=1), _clips(6, seed=2)
    before = [_counts(s.address) for s in pair]

    async def run():
        async with AsyncFoveaClient([s.address for s in pair]) as client:
            await asyncio.to_thread(_wait_connected, client)
            features = await asyncio.gather(*(client.extract_image(i, "gabor") for i in images))
            streamed = [f async for _, f in client.stream_clips(clips, "motion")]
            return features, streamed

    features, streamed = asyncio.run(run())
    served = [_counts(s.address)["gabor"] - n["gabor"] for s, n in zip(pair, before,
                                                                      strict=True)]
    assert sum(served) == 8 and min(served) >= 2, served
    with grpc.insecure_channel(pair[0].address) as channel:
        for image, got in zip(images, features, strict=True):
            np.testing.assert_array_equal(got["simple"], raw_features(channel, "gabor", image))
        for got, reference in zip(streamed, raw_clip_features(channel, "motion", clips),
                                  strict=True):
            np.testing.assert_array_equal(got["energy"], reference)


def test_an_async_stream_resumes_on_the_other_replica(models_file, caplog):
    """The replica carrying a clip stream stops after three clips; the stream goes on, from
    its first unanswered clip, on the other one."""
    servers = [start_server(models_file, grace_seconds=0.0) for _ in range(2)]
    clips = _clips(10, seed=3)
    with grpc.insecure_channel(servers[0].address) as channel:
        expected = raw_clip_features(channel, "motion", clips)
    before = [_counts(s.address)["motion"] for s in servers]

    async def run():
        results, stopped = [], None
        async with AsyncFoveaClient([s.address for s in servers], retry=FAST_RETRY,
                                    clips_in_flight=2) as client:
            async for clip, features in client.stream_clips(iter(clips), "motion"):
                results.append((clip, features["energy"]))
                if len(results) == 3:
                    carrying = [_counts(s.address)["motion"] > n
                                for s, n in zip(servers, before, strict=True)]
                    stopped = servers[carrying.index(True)]
                    await asyncio.to_thread(stopped.stop, 0.0)
                await asyncio.sleep(0.02)
        return results, stopped

    try:
        with caplog.at_level(logging.INFO, logger="foveal.clients"):
            results, stopped = asyncio.run(run())
    finally:
        for server in servers:
            server.stop()
    assert [clip is original for (clip, _), original in zip(results, clips, strict=True)] \
        == [True] * 10
    for (_, got), reference in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, reference)
    resumed = [r.getMessage() for r in caplog.records if "ExtractClips on" in r.getMessage()]
    assert resumed and stopped.address in resumed[0]
    assert "UNAVAILABLE" in resumed[0] and "on another replica" in resumed[0]


def test_a_draining_replica_hands_new_calls_to_the_others(models_file):
    """A replica stopping gracefully (as on SIGTERM) finishes what it has and refuses the
    rest; the client sends those to the other replica: every call answered, right."""
    servers = [start_server(models_file, grace_seconds=5.0) for _ in range(2)]
    images = _images(60, seed=6)
    answered: list[int] = []
    try:
        with FoveaClient([s.address for s in servers], retry=FAST_RETRY) as client:
            def extract(i: int) -> np.ndarray:
                features = client.extract_image(images[i], "gabor")["simple"]
                answered.append(i)
                return features

            def drain_midway() -> None:
                while len(answered) < 20:
                    time.sleep(0.005)
                servers[0].stop(grace=5.0)
                after[servers[1].address] = _counts(servers[1].address)["gabor"]

            after: dict[str, int] = {}
            drainer = threading.Thread(target=drain_midway)
            drainer.start()
            with ThreadPoolExecutor(4) as pool:
                results = list(pool.map(extract, range(len(images))))
            drainer.join(30)
        assert not drainer.is_alive()
        assert _counts(servers[1].address)["gabor"] > after[servers[1].address]
        with grpc.insecure_channel(servers[1].address) as channel:
            for image, got in zip(images, results, strict=True):
                np.testing.assert_array_equal(got, raw_features(channel, "gabor", image))
    finally:
        for server in servers:
            server.stop()


def test_extract_cli_spreads_over_the_servers_it_is_given(pair, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    images = _images(6, seed=4)
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(folder / f"{i}.png")
    before = [_counts(s.address)["gabor"] for s in pair]
    code = main(["extract", str(folder), "--model", "gabor", "--server", pair[0].address,
                 "--server", pair[1].address, "--out", str(tmp_path / "out"), "--jobs", "2"])
    assert code == 0, capsys.readouterr().err
    served = [_counts(s.address)["gabor"] - n for s, n in zip(pair, before, strict=True)]
    assert sum(served) == 6 and min(served) >= 1, served
    outputs = sorted((tmp_path / "out").glob("*-*"))
    assert len(outputs) == 6
    with grpc.insecure_channel(pair[1].address) as channel:
        expected = {raw_features(channel, "gabor", p).tobytes() for p in images}
    assert {load_output(o)["simple"].tobytes() for o in outputs} == expected


def test_three_servers_one_killed_midway_lose_nothing(models_file, caplog):
    """Three `foveal serve` processes; a client given all three sends 240 images and six clip
    streams of 20 clips; one server is SIGKILLed midway. Every request is answered exactly
    once and correctly, and both survivors served calls after the kill."""
    images = _images(240, seed=5)
    streams = [_clips(20, seed=10 + j) for j in range(6)]
    with spawn_servers(3, str(models_file), "torch") as servers, \
            FoveaClient([s.address for s in servers], retry=FAST_RETRY,
                        requests_in_flight=8) as client:
        victim, survivors = servers[1], [servers[0], servers[2]]
        with grpc.insecure_channel(servers[0].address) as channel:  # hand-built references
            expected_images = [raw_features(channel, "gabor", image) for image in images]
            expected_clips = [raw_clip_features(channel, "motion", s) for s in streams]
        answered: list[int] = []
        after_kill: dict[str, dict[str, int]] = {}

        def image(i: int) -> np.ndarray:
            features = client.extract_image(images[i], "gabor")["simple"]
            answered.append(i)
            return features

        def stream(j: int) -> list:
            def paced():  # clip k once 10k images are answered: streams span the kill
                for k, clip in enumerate(streams[j]):
                    while len(answered) < 10 * k:
                        time.sleep(0.005)
                    yield clip
            return list(client.stream_clips(paced(), "motion"))

        def kill_midway() -> None:
            deadline = time.monotonic() + 60
            while len(answered) < 80 or _counts(victim.address)["motion"] < 2:
                assert time.monotonic() < deadline, "the victim never carried a clip stream"
                time.sleep(0.01)
            victim.process.kill()  # SIGKILL: no drain, connections reset
            victim.process.wait()
            after_kill.update({s.address: _counts(s.address) for s in survivors})

        killer = threading.Thread(target=kill_midway)
        with caplog.at_level(logging.INFO, logger="foveal.clients"), \
                ThreadPoolExecutor(10) as pool:
            stream_jobs = [pool.submit(stream, j) for j in range(len(streams))]
            killer.start()
            image_results = list(pool.map(image, range(len(images))))
            clip_results = [job.result() for job in stream_jobs]
            killer.join()
        finals = {s.address: _counts(s.address) for s in survivors}

    assert victim.process.returncode == -9 and len(answered) == len(images)
    for got, reference in zip(image_results, expected_images, strict=True):
        np.testing.assert_array_equal(got, reference)
    for results, clips, references in zip(clip_results, streams, expected_clips, strict=True):
        assert len(results) == len(clips)  # each clip answered once, in order
        for (clip, features), original, reference in zip(results, clips, references,
                                                         strict=True):
            assert clip is original
            np.testing.assert_array_equal(features["energy"], reference)
    for address, counts in finals.items():  # both survivors kept serving after the kill
        assert counts["gabor"] > after_kill[address]["gabor"], address
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"ExtractClips on {victim.address} failed with UNAVAILABLE" in m
               for m in messages), messages
