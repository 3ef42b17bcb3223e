"""Connected-component post-processing of label maps, and nnU-Net's rule for choosing it on validation.

A rule maps each foreground class to one option: ``largest_component`` (keep only the class's largest
connected component) or ``min_size_<N>`` (remove the class's components smaller than N voxels); the
removed voxels become background (0), as in nnU-Net. A class without an entry is left as predicted.

The choice (:func:`choose_rule`) keeps an option for a class only where it raises that class's mean Dice
over the validation cases. It works on per-option Dice totals (:class:`RuleEvidence`), so the evidence of
several folds' validation cases can be pooled (:func:`pool_evidence`) and the rule of an ensemble chosen
over all of them without predicting again, as nnU-Net chooses its post-processing on the cross-validation.

Components are found with ``scipy.ndimage.label`` (face connectivity); both options share it and a
``bincount`` of the component sizes. MONAI's ``KeepLargestConnectedComponent`` covers only the first
option and ``RemoveSmallObjects`` needs scikit-image, which segpipe does not depend on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

NONE = "none"
LARGEST = "largest_component"
MIN_SIZE_PREFIX = "min_size_"
DEFAULT_MIN_SIZES = (20, 100)


def option_names(min_sizes: Sequence[int] = DEFAULT_MIN_SIZES) -> list[str]:
    """The options tried per class: ``none``, ``largest_component``, ``min_size_<N>`` for each N."""
    return [NONE, LARGEST, *(f"{MIN_SIZE_PREFIX}{int(n)}" for n in min_sizes)]


def _check_option(option: str) -> None:
    size = option.removeprefix(MIN_SIZE_PREFIX)
    if option not in (NONE, LARGEST) and not (option.startswith(MIN_SIZE_PREFIX) and size.isdigit()):
        expected = f"{NONE}, {LARGEST} or {MIN_SIZE_PREFIX}<N>"
        raise ValueError(f"unknown post-processing option {option!r}: expected {expected}")


def clean_class(labels: np.ndarray, cls: int, option: str) -> np.ndarray:
    """``labels`` with class ``cls`` cleaned by ``option``; removed voxels become 0 (a new array).

    Args:
        labels: integer label map of any shape (H, W) or (X, Y, Z).
        cls: the foreground class to clean.
        option: ``none``, ``largest_component`` or ``min_size_<N>``.

    Raises:
        ValueError: for an unknown option.
    """
    _check_option(option)
    result = labels.copy()
    if option == NONE:
        return result
    components, count = ndimage.label(labels == cls)
    if count == 0:
        return result
    sizes = np.bincount(components.ravel())
    sizes[0] = 0  # the background of the binary map is no component
    if option == LARGEST:
        keep = sizes == sizes.max()
        keep[np.flatnonzero(keep)[1:]] = False  # ties: the first component, deterministically
    else:
        keep = sizes >= int(option.removeprefix(MIN_SIZE_PREFIX))
    keep[0] = True
    result[~keep[components]] = 0
    return result


def apply_rule(labels: np.ndarray | torch.Tensor, rule: Mapping[int, str]) -> np.ndarray | torch.Tensor:
    """Apply ``rule`` ({class: option}) to one label map of any shape (H, W) or (X, Y, Z).

    Returns the same type (and for tensors the same device and dtype) as ``labels``; a batch goes through
    :func:`apply_rule_to_batch`, so that components never join across its items.
    """
    if not rule:
        return labels
    if isinstance(labels, torch.Tensor):
        cleaned = apply_rule(labels.detach().cpu().numpy(), rule)
        return torch.as_tensor(cleaned).to(device=labels.device, dtype=labels.dtype)
    return _apply(labels, rule)


def _apply(labels: np.ndarray, rule: Mapping[int, str]) -> np.ndarray:
    result = labels
    for cls, option in sorted(rule.items()):
        result = clean_class(result, int(cls), option)
    return result


def apply_rule_to_batch(labels: torch.Tensor, rule: Mapping[int, str]) -> torch.Tensor:
    """:func:`apply_rule` on each item of a batch of label maps (B, *spatial)."""
    if not rule:
        return labels
    return torch.stack([apply_rule(item, rule) for item in labels])


def case_dice(prediction: np.ndarray, target: np.ndarray, cls: int, ignore_index: int | None = None) -> float:
    """Dice of class ``cls`` in one case, voxels labelled ``ignore_index`` left out; 1.0 when both maps
    lack the class (nothing to find, nothing found)."""
    valid = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
    predicted, truth = (prediction == cls) & valid, target == cls
    total = int(predicted.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((predicted & truth).sum()) / total


@dataclass
class RuleEvidence:
    """Per class and option, the sum of the cases' Dice and the number of cases: poolable across folds.

    ``totals[cls][option] = [dice_sum, cases]``; :meth:`to_dict`/:meth:`from_dict` for checkpoints (JSON).
    """

    totals: dict[int, dict[str, list[float]]] = field(default_factory=dict)

    def add_case(
        self,
        prediction: np.ndarray,
        target: np.ndarray,
        classes: Iterable[int],
        options: Sequence[str],
        ignore_index: int | None = None,
    ) -> None:
        """Score every option of every class on one case (prediction and target label maps, same shape)."""
        for cls in classes:
            per_option = self.totals.setdefault(int(cls), {})
            for option in options:
                score = case_dice(clean_class(prediction, int(cls), option), target, int(cls), ignore_index)
                dice_sum, cases = per_option.get(option, [0.0, 0])
                per_option[option] = [dice_sum + score, cases + 1]

    def mean(self, cls: int, option: str) -> float:
        """Mean Dice of class ``cls`` over the cases with ``option`` applied."""
        dice_sum, cases = self.totals[cls][option]
        return dice_sum / cases

    def to_dict(self) -> dict[str, dict[str, list[float]]]:
        return {str(cls): {k: list(v) for k, v in options.items()} for cls, options in self.totals.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Sequence[float]]]) -> RuleEvidence:
        return cls({int(c): {k: [float(v[0]), int(v[1])] for k, v in options.items()} for c, options in data.items()})


def choose_rule(evidence: RuleEvidence) -> dict[int, str]:
    """nnU-Net's choice: per class, the option with the highest mean Dice, kept only where it is strictly
    above the unprocessed mean (``none``); classes whose best option is ``none`` get no entry."""
    rule = {}
    for cls in sorted(evidence.totals):
        baseline = evidence.mean(cls, NONE)
        best = max(evidence.totals[cls], key=lambda option: (evidence.mean(cls, option), option == NONE))
        if best != NONE and evidence.mean(cls, best) > baseline:
            rule[cls] = best
    return rule


def mean_dice(evidence: RuleEvidence, rule: Mapping[int, str]) -> float:
    """Mean over the foreground classes of each class's mean Dice under ``rule`` (``none`` where absent)."""
    return float(np.mean([evidence.mean(cls, rule.get(cls, NONE)) for cls in sorted(evidence.totals)]))


def pool_evidence(parts: Iterable[RuleEvidence]) -> RuleEvidence:
    """The evidence of several validation sets (folds) as one: sums and counts added per class and option.

    Raises:
        ValueError: when the parts scored different classes or options.
    """
    pooled = RuleEvidence()
    for part in parts:
        if pooled.totals and _keys(pooled) != _keys(part):
            raise ValueError(f"post-processing evidence of different classes/options: {_keys(pooled)} vs {_keys(part)}")
        for cls, options in part.totals.items():
            target = pooled.totals.setdefault(cls, {})
            for option, (dice_sum, cases) in options.items():
                old = target.get(option, [0.0, 0])
                target[option] = [old[0] + dice_sum, old[1] + cases]
    return pooled


def _keys(evidence: RuleEvidence) -> dict[int, list[str]]:
    return {cls: sorted(options) for cls, options in sorted(evidence.totals.items())}


def decision(evidence: RuleEvidence) -> dict[str, Any]:
    """What is stored with a model (checkpoint entry and ``postprocessing.json``): the chosen ``rule``
    ({class: option}, JSON keys as strings), the mean foreground validation Dice before and after it, and
    the ``evidence`` it was chosen on."""
    rule = choose_rule(evidence)
    return {
        "rule": {str(cls): option for cls, option in rule.items()},
        "val_dice_before": mean_dice(evidence, {}),
        "val_dice_after": mean_dice(evidence, rule),
        "evidence": evidence.to_dict(),
    }


def rule_of(stored: Mapping[str, Any] | None) -> dict[int, str]:
    """The ``{class: option}`` rule of a stored decision (empty for None).

    Raises:
        ValueError: for an unknown option.
    """
    rule = {int(cls): str(option) for cls, option in ((stored or {}).get("rule") or {}).items()}
    for option in rule.values():
        _check_option(option)
    return rule
