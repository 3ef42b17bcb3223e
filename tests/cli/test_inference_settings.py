"""Predict-time inference settings (``--model.tta``, ``--model.inference_*``) win over a checkpoint's."""

from __future__ import annotations

from jsonargparse import Namespace

from segpipe.cli.fit import inference_settings_given


def test_settings_set_in_the_config_or_named_on_the_command_line_are_kept():
    model = Namespace(tta=[0, 1], inference_overlap=0.5, inference_dtype="float16", inference_batch_size=4)
    config = Namespace(model=model)
    # non-default values from the config, and a default value named explicitly on the command line
    given = inference_settings_given(config, ["--config", "x.yaml", "--model.inference_overlap", "0.5"])
    assert given == {"tta": [0, 1], "inference_overlap": 0.5, "inference_dtype": "float16"}


def test_defaults_nobody_named_leave_the_checkpoint_s_values():
    config = Namespace(model=Namespace(tta=False, inference_overlap=0.5, inference_batch_size=4))
    assert inference_settings_given(config, ["--config", "x.yaml"]) == {}
    assert inference_settings_given(config, ["--model.tta=false"]) == {"tta": False}
    assert inference_settings_given(None, []) == {}
