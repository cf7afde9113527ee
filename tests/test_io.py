"""Atomic writes: the result has the permissions of a normally created file (0666 less the umask),
not the temporary file's 0600, and a failed write leaves the target as it was."""
import os
import stat

import matplotlib.pyplot as plt
import pytest

from robust_abstain.io import atomic_path, save_checkpoint, save_figure, save_json, save_text


@pytest.fixture(params=[0o022, 0o002, 0o077], ids=["022", "002", "077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_respect_the_umask(tmp_path, umask):
    save_json({"a": 1}, tmp_path / "r/metrics.json")
    save_text("# report\n", tmp_path / "r/summary.md")
    save_checkpoint({"epoch": 1}, tmp_path / "m.pt")
    save_figure(plt.figure(), tmp_path / "fig.png")
    expected = 0o666 & ~umask  # e.g. 0644 under the usual umask 022
    for f in ("r/metrics.json", "r/summary.md", "m.pt", "fig.png"):
        assert mode(tmp_path / f) == expected, f
    (tmp_path / "plain.txt").write_text("x")  # what open() makes, for comparison
    assert mode(tmp_path / "plain.txt") == expected


def test_a_failed_write_leaves_the_target_and_no_temp_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new")
        raise RuntimeError("boom")
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["out.txt"]
