"""The pieces of batch extraction on their own: input listing, the progress line, the clip
window's resend logic, and cleaning up after killed runs."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from foveal.clients.inputs import collect_inputs
from foveal.clients.outputs import OutputStore
from foveal.clients.progress import Progress
from foveal.clients.streaming import DONE, PULL, SEND, STALE, WAIT, ClipWindow


def test_inputs_from_files_folders_and_lists(tmp_path):
    (tmp_path / "videos" / "deeper").mkdir(parents=True)
    for name in ("videos/b.mp4", "videos/a.MKV", "videos/deeper/c.webm", "videos/x.png",
                 "videos/notes.txt", "photo.jpg"):
        (tmp_path / name).write_bytes(b"")
    listing = tmp_path / "more.lst"
    listing.write_text("# a comment\n\nphoto.jpg\nvideos/b.mp4\nmissing.mp4\n")
    found = collect_inputs([tmp_path / "videos", listing, tmp_path / "videos" / "b.mp4"],
                           "video")
    names = [p.relative_to(tmp_path).as_posix() for p in found]
    # folders: video suffixes only, sorted; lists: paths from the list's folder; each once
    assert names == ["videos/a.MKV", "videos/b.mp4", "videos/deeper/c.webm", "photo.jpg",
                     "missing.mp4"]
    assert [p.name for p in collect_inputs([tmp_path / "videos"], "image")] == ["x.png"]


def test_progress_line():
    progress = Progress(total=4, stream=io.StringIO(), enabled=True, width=8)
    line = progress.line(done=2, clips=30, failed=1, now=progress.start + 10)
    assert line == "[####....] 2/4 inputs  30 clips  3.0 clips/s  ETA 0:00:10  1 failed"
    progress.update(2, 30, 1, force=True)
    progress.close()
    assert progress.stream.getvalue().startswith("\r[####....] 2/4 inputs")
    quiet = Progress(total=4, stream=io.StringIO())  # StringIO is not a terminal
    quiet.update(1, 1, 0, force=True)
    assert quiet.stream.getvalue() == ""


def test_clip_window_bounds_what_is_unanswered_and_resends_it_on_a_new_attempt():
    window = ClipWindow(iter("abcd"), limit=2)
    first = window.new_attempt()
    sent = []
    for _ in range(2):
        assert window.next_action(first) == (PULL, None)
        window.pulled(next(window.source))
        action, entry = window.next_action(first)
        assert action == SEND
        sent.append(entry)
    assert sent == [("0", "a"), ("1", "b")]
    assert window.next_action(first) == (WAIT, None)  # two unanswered: the limit
    assert window.answered("0") == "a"
    second = window.new_attempt()  # the stream broke: "b" was not answered
    assert window.next_action(first) == (STALE, None)
    assert window.next_action(second) == (SEND, ("1", "b"))
    assert window.next_action(second) == (PULL, None)
    window.pulled("c")
    assert window.next_action(second) == (SEND, ("2", "c"))
    assert window.answered("1") == "b" and window.answered("2") == "c"
    assert window.next_action(second) == (PULL, None)
    window.pulled(end=True)
    assert window.next_action(second) == (DONE, None) and window.finished
    with pytest.raises(Exception, match="no clip was waiting"):
        window.answered("3")


def test_stale_partial_outputs_of_dead_runs_are_removed(tmp_path):
    store = OutputStore(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    leftover = tmp_path / f".clip-0123456789.partial-{dead}"
    leftover.mkdir()
    (leftover / "energy.npy").write_bytes(b"half")
    ours = tmp_path / f".other-0123456789.partial-{os.getpid()}"
    ours.write_bytes(b"being written")
    assert store.remove_stale_partials() == [leftover]
    assert not leftover.exists() and ours.exists()
