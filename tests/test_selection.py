"""The selection split: carved from the train split, seeded, whole groups, label-blind, removed from training."""
import dataclasses

import pytest

from glmd_lib.superglue.data import read_split
from glmd_lib.superglue.toy import write_toy_dataset
from glmd_lib.tasks.selection import carve_selection, holdout_size, selection_split


@pytest.fixture
def toy(tmp_path):
    return write_toy_dataset(tmp_path / "sg", n=40, tasks=["CB", "MultiRC"])


def test_holdout_size():
    assert holdout_size(250, 0.1, None) == 25 and holdout_size(2490, 0.1, 120) == 120
    assert holdout_size(3, 0.1, None) == 1 and holdout_size(0, 0.1, None) == 0


def test_carve_is_seeded_disjoint_and_keeps_order(toy):
    train = read_split("CB", "train", toy)
    rest, held = carve_selection(train, 0.25, None, seed=0)
    assert len(held) == 10 and len(rest) == 30
    assert {ex.idx for ex in rest}.isdisjoint(ex.idx for ex in held)
    assert [ex.idx for ex in rest] == sorted(ex.idx for ex in rest)
    again = carve_selection(read_split("CB", "train", toy), 0.25, None, seed=0)[1]
    assert [ex.idx for ex in again] == [ex.idx for ex in held]
    other = carve_selection(train, 0.25, None, seed=1)[1]
    assert [ex.idx for ex in other] != [ex.idx for ex in held]


def test_carve_ignores_labels_so_stage2_can_carve_the_label_free_copy(toy):
    train = read_split("CB", "train", toy)
    blind = [dataclasses.replace(ex, label=None) for ex in train]
    assert [ex.idx for ex in carve_selection(blind, 0.2, 5, 3)[1]] == [ex.idx for ex in carve_selection(train, 0.2, 5, 3)[1]]


def test_multirc_holds_out_whole_questions(toy):
    rest, held = carve_selection(read_split("MultiRC", "train", toy), 0.1, None, seed=0)
    assert held and {ex.group_key for ex in held}.isdisjoint(ex.group_key for ex in rest)
    assert all(sum(ex.group_key == g for ex in held) == 2 for g in {ex.group_key for ex in held})


def test_selection_split_by_setting(toy):
    hold = selection_split("CB", "train_holdout", toy, fraction=0.1, cap=3, seed=0)
    assert (len(hold.train), len(hold.selection), hold.source) == (37, 3, "train holdout")
    dev = selection_split("CB", "dev", toy, max_dev=7)
    assert len(dev.train) == 40 and len(dev.selection) == 7 and dev.describe()["select_on"] == "dev"
    last = selection_split("CB", "last", toy)
    assert len(last.train) == 40 and last.selection == []
    with pytest.raises(ValueError, match="select_on"):
        selection_split("CB", "test", toy)
    with pytest.raises(ValueError, match="whole train split"):
        carve_selection(read_split("CB", "train", toy)[:1], 0.5, None, 0)
