"""Load pretrained weights into an encoder: key matching, first-convolution adaptation, a report.

Accepted sources are plain state dicts (an smp encoder's, a torchvision or timm classifier's), files
holding one under ``state_dict``/``model``, and Lightning checkpoints such as those of
``segpipe classify``. Keys are matched after stripping one source prefix (``net.encoder.``,
``module.``, ...) and adding one target prefix (``model.`` for timm encoders), chosen to match the
most tensors of equal shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from segpipe.errors import CheckpointError, SegpipeError
from segpipe.io.checkpoints import safe_load

_MAX_PREFIX_DEPTH = 3


@dataclass(frozen=True)
class LoadReport:
    """What a weights file gave an encoder: the keys that matched, the encoder's keys left as they
    were, the file's keys that fit nothing, and first convolutions adapted to other input channels."""

    source: str
    matched: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    adapted: tuple[str, ...]

    def summary(self) -> str:
        adapted = f", first conv adapted ({', '.join(self.adapted)})" if self.adapted else ""
        return (
            f"encoder weights {self.source}: {len(self.matched)} matched, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected{adapted}"
        )


def adapt_conv_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A 3-channel first-convolution kernel (O, 3, *k) made into (O, ``in_channels``, *k).

    Every input channel gets the RGB sum divided by ``in_channels``, so ``in_channels`` copies of a gray
    image ``x`` (and, for one channel, ``x`` itself) give exactly the response the RGB kernel gives to
    ``(x, x, x)``. (segmentation-models-pytorch repeats R, G, B cyclically scaled by ``3 / C``, which
    keeps that response only when ``C`` is a multiple of 3; medical channels, e.g. MR sequences, have
    no RGB order to keep.)

    Raises:
        ValueError: if ``weight`` does not have 3 input channels or ``in_channels`` < 1.
    """
    if weight.ndim < 3 or weight.shape[1] != 3:
        raise ValueError(f"expected a kernel with 3 input channels, got shape {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    gray = weight.sum(1, keepdim=True) / in_channels
    return gray.repeat(1, in_channels, *([1] * (weight.ndim - 2)))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (``.safetensors``, ``.pth``/``.pt``/``.bin`` or Lightning ``.ckpt``).

    Raises:
        SegpipeError: if the file is missing, unreadable or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise SegpipeError(f"encoder weights file {path} does not exist; give 'imagenet', 'none' or a file")
    try:
        obj: object = load_file(str(path), device="cpu") if path.suffix == ".safetensors" else safe_load(path)
    except CheckpointError as err:  # already one line naming the file and the reason
        raise SegpipeError(f"cannot read encoder weights: {err}") from None
    except Exception as err:  # safetensors raises several types for a bad file
        raise SegpipeError(f"cannot read encoder weights {path}: {type(err).__name__}: {err}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise SegpipeError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise SegpipeError(f"{path} holds no tensors")
    return tensors


def _prefixes(keys: list[str]) -> set[str]:
    found = {""}
    for key in keys:
        parts = key.split(".")
        for depth in range(1, min(len(parts), _MAX_PREFIX_DEPTH + 1)):
            found.add(".".join(parts[:depth]) + ".")
    return found


def _is_adaptable(source: torch.Tensor, target: torch.Tensor) -> bool:
    return (
        source.ndim == target.ndim >= 3
        and source.shape[1] == 3
        and target.shape[1] != 3
        and source.shape[0] == target.shape[0]
        and source.shape[2:] == target.shape[2:]
    )


def match_state_dict(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Map ``source`` tensors onto ``target`` keys.

    Returns ``(tensors, origin, adapted)``: the tensors to load under target keys, the source key each
    came from, and the target keys whose 3-channel kernel was adapted by :func:`adapt_conv_weight`.
    """
    source_keys = list(source)
    best: tuple[int, str, str] = (-1, "", "")
    candidates = [p for p in _prefixes(source_keys) if any(k.startswith(p) for k in source_keys)]
    target_prefixes = [q for q in _prefixes(list(target)) if q.count(".") <= 1]
    for strip in sorted(candidates):
        stripped = [k[len(strip) :] for k in source_keys if k.startswith(strip)]
        for add in sorted(target_prefixes):
            hits = sum(1 for k in stripped if add + k in target)
            if hits > best[0]:
                best = (hits, strip, add)
    _, strip, add = best
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    adapted: list[str] = []
    for key, value in source.items():
        if not key.startswith(strip):
            continue
        name = add + key[len(strip) :]
        if name not in target:
            continue
        wanted = target[name]
        if value.shape == wanted.shape:
            tensors[name] = value
        elif _is_adaptable(value, wanted):
            tensors[name] = adapt_conv_weight(value, wanted.shape[1])
            adapted.append(name)
        else:
            continue
        origin[name] = key
    return tensors, origin, adapted


def load_encoder_weights(encoder: nn.Module, path: str | Path, source_name: str | None = None) -> LoadReport:
    """Copy the matching tensors of the weights file ``path`` into ``encoder`` (in place).

    Raises:
        SegpipeError: if the file cannot be read or none of its tensors fits the encoder.
    """
    source = read_state_dict(path)
    target = encoder.state_dict()
    tensors, origin, adapted = match_state_dict(source, target)
    if not tensors:
        example = ", ".join(list(source)[:3])
        raise SegpipeError(
            f"no tensor of {path} fits the encoder (file keys like {example}; encoder keys like "
            f"{', '.join(list(target)[:3])}): is it a checkpoint of the same backbone?"
        )
    with torch.no_grad():
        for name, value in tensors.items():
            target[name].copy_(value.to(target[name].dtype))
    used = set(origin.values())
    return LoadReport(
        source=source_name or str(path),
        matched=tuple(tensors),
        missing=tuple(k for k in target if k not in tensors),
        unexpected=tuple(k for k in source if k not in used),
        adapted=tuple(adapted),
    )
