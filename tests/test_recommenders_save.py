"""Saving a recommender over an older one: an error or a crash at any step leaves a whole model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_recommenders import CHECKERBOARD_AS_OF, CHECKERBOARD_PARAMS, checkerboard

from training.recommenders import models
from training.recommenders.models import ARRAYS_FILE, MODEL_FILE, load_recommender, make_recommender


@pytest.fixture(scope="module")
def two_models():
    """An ALS model (the one on disk) and an item-kNN model (the one being saved over it): their
    files differ in every way, so a mix of the two cannot load or gives other lists."""
    tables, data = checkerboard()
    old = make_recommender("als", **CHECKERBOARD_PARAMS["als"]).fit_tables(tables, CHECKERBOARD_AS_OF)
    new = make_recommender("itemknn", neighbours=3).fit_tables(tables, CHECKERBOARD_AS_OF)
    return old, new, data


def lists(model, data) -> np.ndarray:
    return model.top_k(model.rows_for(data.customer_ids, data), data.matrix, 5)[0]


def test_an_error_writing_the_descriptor_leaves_the_old_model(two_models, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    old, new, data = two_models
    target = tmp_path / "model"
    old.save(target)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(models.json, "dumps", fail)  # the second write: the arrays are already written
    with pytest.raises(OSError, match="disk full"):
        new.save(target)
    monkeypatch.undo()
    again = load_recommender(target)
    assert again.kind == "als"
    np.testing.assert_array_equal(lists(again, data), lists(old, data))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "the failed save left files behind"


# Each step of a save, and the call of it that is cut short: the crash happens just before the call.
CRASH_POINTS = [
    ("numpy.savez", 1),  # writing the arrays
    ("json.dumps", 1),  # writing the descriptor
    ("os.rename", 1),  # moving the old model aside
    ("os.rename", 2),  # moving the new model in
    ("shutil.rmtree", 1),  # removing the old model
]


def _crash_at(name: str, call: int):
    module, attr = name.split(".")
    target = {"numpy": np, "json": json, "os": os, "shutil": shutil}[module]
    real, calls = getattr(target, attr), [0]

    def crashing(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            os._exit(17)  # as abrupt as SIGKILL: no finally, no cleanup
        return real(*args, **kwargs)

    setattr(target, attr, crashing)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize(("step", "call"), CRASH_POINTS)
def test_a_crash_at_any_step_leaves_a_whole_model(two_models, tmp_path: Path, step: str, call: int) -> None:
    """The save runs in a forked child that dies at ``step``; the parent then loads what is there."""
    old, new, data = two_models
    target = tmp_path / "model"
    old.save(target)
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            _crash_at(step, call)
            new.save(target)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 17, f"the save never reached {step} call {call}"
    again = load_recommender(target)
    expected = old if again.kind == "als" else new
    np.testing.assert_array_equal(lists(again, data), lists(expected, data))
    # the next save finishes the job and leaves nothing else beside the model
    new.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in target.iterdir()) == sorted([ARRAYS_FILE, MODEL_FILE])
    np.testing.assert_array_equal(lists(load_recommender(target), data), lists(new, data))


def test_other_files_come_along_and_a_link_is_followed(two_models, tmp_path: Path) -> None:
    old, new, data = two_models
    shared = tmp_path / "shared"
    old.save(shared)
    (shared / "notes.txt").write_text("keep me")
    (shared / "MLmodel.d").mkdir()
    (shared / "MLmodel.d" / "x").write_text("x")
    (shared / ARRAYS_FILE).chmod(0o600)
    new.save(shared)
    assert (shared / "notes.txt").read_text() == "keep me" and (shared / "MLmodel.d" / "x").read_text() == "x"
    assert ((shared / ARRAYS_FILE).stat().st_mode & 0o777) == 0o600
    np.testing.assert_array_equal(lists(load_recommender(shared), data), lists(new, data))

    real, link = tmp_path / "v1", tmp_path / "current"
    old.save(real)
    real.chmod(0o750)
    link.symlink_to(real, target_is_directory=True)
    new.save(link)
    assert link.is_symlink() and (real.stat().st_mode & 0o777) == 0o750
    np.testing.assert_array_equal(lists(load_recommender(link), data), lists(new, data))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_crash_saving_into_an_empty_directory_leaves_no_model_or_a_whole_one(two_models, tmp_path: Path) -> None:
    _, new, data = two_models
    target = tmp_path / "model"
    target.mkdir()
    pid = os.fork()
    if pid == 0:
        try:
            _crash_at("json.dumps", 1)  # the arrays are written, the descriptor is not
            new.save(target)
        finally:
            os._exit(0)
    assert os.WEXITSTATUS(os.waitpid(pid, 0)[1]) == 17
    assert not (target / MODEL_FILE).exists()  # no descriptor: no model (what the privacy scan looks for)
    with pytest.raises(FileNotFoundError):
        load_recommender(target)
    new.save(target)
    assert sorted(p.name for p in target.iterdir()) == sorted([ARRAYS_FILE, MODEL_FILE])
    np.testing.assert_array_equal(lists(load_recommender(target), data), lists(new, data))
