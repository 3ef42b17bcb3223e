"""Find ImageNet weights for an encoder in the Hugging Face cache, downloading them when online.

segmentation-models-pytorch 0.6 and timm 1.0 both publish their ImageNet weights on the Hugging Face
Hub (``smp-hub/<encoder>.imagenet``, ``timm/<model>.<tag>``) and cache them under
``~/.cache/huggingface/hub`` (``HF_HOME``/``HF_HUB_CACHE`` move it). A cached file is used without any
network access. Otherwise the Hub is probed with a short TCP connection first, so that a machine
without a network fails in seconds with instructions, instead of waiting on retries.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import segmentation_models_pytorch as smp
import timm
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError

from segpipe.errors import SegpipeError

CONNECT_TIMEOUT_S = 3.0
WEIGHTS_FILE = "model.safetensors"


def imagenet_source(encoder: str) -> tuple[str, str | None]:
    """The Hub repository and revision of ``encoder``'s ImageNet weights (smp name or ``tu-<timm name>``).

    Raises:
        SegpipeError: if the encoder has no ImageNet weights on the Hub.
    """
    if encoder.startswith("tu-"):
        name = encoder[3:]
        try:
            cfg = timm.models.get_pretrained_cfg(name)
        except RuntimeError as err:
            raise SegpipeError(f"timm model {name!r} has no pretrained configuration: {err}") from None
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not repo:
            raise SegpipeError(
                f"timm model {name!r} has no weights on the Hugging Face Hub; "
                "pass encoder_weights: /path/to/weights.pth"
            )
        return repo, None
    settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {})
    if "imagenet" not in settings:
        raise SegpipeError(
            f"encoder {encoder!r} has no 'imagenet' weights in segmentation-models-pytorch "
            f"(it has {sorted(settings) or 'none'}); pass encoder_weights: /path/to/weights.pth"
        )
    return settings["imagenet"]["repo_id"], settings["imagenet"].get("revision")


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hugging Face endpoint opens within ``timeout`` seconds."""
    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _cache_dir() -> str:
    return os.path.expanduser(constants.HF_HUB_CACHE)


def imagenet_weights_file(encoder: str) -> str:
    """Local path of ``encoder``'s ImageNet weights: from the cache, else downloaded.

    Raises:
        SegpipeError: within about :data:`CONNECT_TIMEOUT_S` seconds when the file is not cached and
            the Hub cannot be reached; the message says how to supply the file.
    """
    repo, revision = imagenet_source(encoder)
    try:
        return hf_hub_download(repo, WEIGHTS_FILE, revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:
        pass
    if not hub_reachable():
        raise SegpipeError(
            f"encoder_weights 'imagenet' for {encoder!r}: no network to {constants.ENDPOINT} and the file "
            f"is not cached; on a connected machine run `hf download {repo} {WEIGHTS_FILE}` "
            f"and copy {_cache_dir()} here (or set HF_HOME), or pass encoder_weights: /path/to/weights.pth"
        )
    try:
        return hf_hub_download(repo, WEIGHTS_FILE, revision=revision)
    except Exception as err:  # network, HTTP and filesystem errors of the download
        raise SegpipeError(
            f"downloading {repo}/{WEIGHTS_FILE} failed ({type(err).__name__}: {err}); "
            "pass encoder_weights: /path/to/weights.pth"
        ) from None
