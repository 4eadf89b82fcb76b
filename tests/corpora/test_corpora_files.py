"""The atomic "build a cached folder once" helper every cache under $PATHOR1_HOME uses."""
import pytest

from corpora.files import build_folder_once


def test_build_folder_once_leaves_nothing_after_a_crash(tmp_path):
    def crash(staging):
        (staging / "half").mkdir(parents=True)
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        build_folder_once(tmp_path / "thing", crash, marker="done")
    assert list(tmp_path.iterdir()) == []


def test_build_folder_once_loser_of_a_race_keeps_the_winner(tmp_path):
    final = tmp_path / "thing"

    def racing(staging):
        staging.mkdir()
        (staging / "done").write_text("mine")
        final.mkdir()  # another process finishes first
        (final / "done").write_text("theirs")

    assert build_folder_once(final, racing, marker="done") == final
    assert (final / "done").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["thing"]
