"""Ensembles of checkpoints: averaged probabilities, refusals of disagreeing members, pooled post-processing,
and which checkpoint of a run folder is a member."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segpipe.errors import CheckpointError, SegpipeError
from segpipe.inference.ensemble import build_ensemble
from segpipe.inference.ensemble_members import best_checkpoint_in, resolve_members
from segpipe.inference.postprocessing import LARGEST, RuleEvidence, option_names, rule_of
from segpipe.inference.sliding_window import WindowedInference
from segpipe.tasks import SegmentationTask

DATA = {"normalization": "zscore", "spacing": "median", "fold": 0, "num_workers": 0}


def task(seed: int, **overrides: object) -> SegmentationTask:
    torch.manual_seed(seed)
    hparams = {"spatial_dims": 3, "num_classes": 3, "model_kwargs": {"depth": 2, "base_channels": 4}} | overrides
    return SegmentationTask(**hparams).eval()


def save(path: Path, member: SegmentationTask, data: dict | None = None, postprocessing: dict | None = None) -> Path:
    checkpoint = {
        "hyper_parameters": dict(member.hparams),
        "state_dict": member.state_dict(),
        "datamodule_hyper_parameters": DATA if data is None else data,
    }
    if postprocessing is not None:
        checkpoint["postprocessing"] = postprocessing
    torch.save(checkpoint, path)
    return path


def test_probabilities_are_the_members_mean_after_each_members_tta(tmp_path: Path):
    members = [task(0), task(1, model="dense_unet", model_kwargs={})]
    paths = [save(tmp_path / f"m{i}.ckpt", m) for i, m in enumerate(members)]
    ensemble = build_ensemble(paths, {"tta": [0, 2], "inference_roi": [16, 16, 8]})
    image = torch.randn(1, 1, 21, 17, 9)
    inference = WindowedInference(3, [16, 16, 8])
    with torch.no_grad():
        expected = sum(inference.probabilities(m.net, image, (0, 2)) for m in members) / 2
        one_pass = sum(inference.logits(m.net, image).softmax(1) for m in members) / 2
        torch.testing.assert_close(ensemble.predict_probabilities(image), expected)
        torch.testing.assert_close(ensemble.infer(image).softmax(1), one_pass)
        prediction = ensemble.predict_step({"image": image, "name": ["case"]}, 0)
    assert torch.equal(prediction["mask"], expected.argmax(1))


@pytest.mark.parametrize(
    ("other", "data", "difference"),
    [
        ({"num_classes": 4}, None, "num_classes: 3 vs 4"),
        ({"class_names": ["bg", "a", "b"]}, None, "class_names: None vs ['bg', 'a', 'b']"),
        ({}, DATA | {"normalization": "ct"}, "preprocessing normalization: 'zscore' vs 'ct'"),
    ],
)
def test_members_that_disagree_are_refused_naming_both_files(
    tmp_path: Path, other: dict, data: dict | None, difference: str
):
    first = save(tmp_path / "a.ckpt", task(0))
    second = save(tmp_path / "b.ckpt", task(1, **other), data)
    with pytest.raises(CheckpointError) as err:
        build_ensemble([first, second], {})
    assert str(err.value) == f"ensemble: {first} and {second} disagree on {difference}"


def test_folds_may_differ_in_split_and_loader_settings(tmp_path: Path):
    first = save(tmp_path / "a.ckpt", task(0))
    second = save(tmp_path / "b.ckpt", task(1), DATA | {"fold": 3, "num_workers": 2, "root": "elsewhere"})
    assert len(build_ensemble([first, second], {}).members) == 2


def test_the_rule_is_chosen_on_the_members_pooled_validation_evidence(tmp_path: Path):
    truth = torch.zeros(9, 11, dtype=torch.int64)
    truth[1:4, 1:4] = 1
    speck = truth.clone()
    speck[7, 8:10] = 1  # a false positive that keeping the largest component removes
    helps, hurts = RuleEvidence(), RuleEvidence()
    helps.add_case(speck.numpy(), truth.numpy(), [1, 2], option_names([]))
    for _ in range(2):  # the other fold: two cases where the speck is real
        hurts.add_case(speck.numpy(), speck.numpy(), [1, 2], option_names([]))
    stored = [{"rule": {}, "evidence": e.to_dict()} for e in (helps, hurts)]
    paths = [save(tmp_path / f"m{i}.ckpt", task(i), postprocessing=s) for i, s in enumerate(stored)]
    assert rule_of(build_ensemble(paths, {}).postprocessing) == {}  # 1 case helped, 2 hurt
    helps.add_case(speck.numpy(), truth.numpy(), [1, 2], option_names([]))
    helps.add_case(speck.numpy(), truth.numpy(), [1, 2], option_names([]))
    stored[0]["evidence"] = helps.to_dict()
    paths[0] = save(tmp_path / "m0.ckpt", task(0), postprocessing=stored[0])
    assert rule_of(build_ensemble(paths, {}).postprocessing) == {1: LARGEST}


def test_best_checkpoint_of_a_run_folder(tmp_path: Path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("best-epoch001-dice0.5.ckpt", "best-epoch004-dice0.7.ckpt"):
        torch.save({}, folder / name)
    with pytest.raises(SegpipeError, match=r"2 checkpoints besides last\.ckpt"):
        best_checkpoint_in(folder)
    best = "/elsewhere/best-epoch004-dice0.7.ckpt"  # the folder was moved since: the name counts
    state = {"ModelCheckpoint{'monitor': 'val/dice'}": {"best_model_path": best}}
    torch.save({"callbacks": state}, folder / "last.ckpt")
    assert best_checkpoint_in(folder) == folder / "best-epoch004-dice0.7.ckpt"
    assert resolve_members([str(tmp_path)], tmp_path, "sqlite:///unused.db") == [folder / "best-epoch004-dice0.7.ckpt"]
    with pytest.raises(SegpipeError, match="no such file or folder"):
        resolve_members([str(tmp_path / "missing")], tmp_path, "sqlite:///unused.db")
