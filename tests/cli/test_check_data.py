"""`segpipe check-data`: every problem in one table (exit 2), or a summary of a clean dataset (exit 0)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from corpus import AFFINE, fit_config, volume_case, write_images, write_nnunet, write_volumes
from PIL import Image

from segpipe.cli import main
from segpipe.io.volumes import write_label, write_volume


def run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(["check-data", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def table_rows(output: str) -> list[tuple[str, str]]:
    """(file, problem) of each row of the Rich table."""
    rows = [line.split("│")[1:3] for line in output.splitlines() if line.startswith("│")]
    return [(a.strip(), b.strip()) for a, b in rows]


def test_clean_3d_dataset_gets_a_summary_and_exit_0(tmp_path: Path, capsys):
    root = write_volumes(tmp_path / "data", n=6)
    image, label = volume_case(np.random.default_rng(9), (15, 11, 9))
    spaced = AFFINE.copy()
    spaced[2, 2] = 3.0
    write_volume(root / "images" / "big.nii.gz", image, spaced)
    write_label(root / "labels" / "big.nii.gz", label, spaced)
    code, out, err = run([str(root)], capsys)
    assert code == 0, out + err
    assert "no problems" in out
    assert "7 (train 6, val 1, test 0)" in out
    assert "0, 1, 2" in out
    assert "13x11x9 .. 15x11x9" in out
    assert "0.8x1.2x2.5 .. 0.8x1.2x3" in out


def test_every_problem_is_listed_with_its_file_and_exit_2(tmp_path: Path, capsys):
    root = write_volumes(tmp_path / "data", n=6)
    _, label = volume_case(np.random.default_rng(1))
    (root / "images" / "case_00.nii.gz").write_bytes(b"")
    write_label(root / "labels" / "case_01.nii.gz", np.where(label == 2, 7, label), AFFINE)
    write_label(root / "labels" / "case_02.nii.gz", label[:, :, :-1], AFFINE)
    (root / "labels" / "case_03.nii.gz").unlink()
    code, out, _ = run([str(root), "--num-classes", "3"], capsys)
    assert code == 2
    rows = table_rows(out)
    assert "4 problems in" in out and len(rows) == 4
    by_file = {Path(f).name: p for f, p in rows}
    assert by_file["case_00.nii.gz"] == "file is empty (0 bytes)"
    assert by_file["case_01.nii.gz"] == "labels [7] are outside the 3 classes 0..2"
    assert by_file["case_02.nii.gz"].startswith("label shape (13, 11, 8) differs from image shape (13, 11, 9)")
    assert by_file["case_03.nii.gz"].startswith("has no label in")


def test_without_num_classes_labels_are_summarised_and_channels_must_agree(tmp_path: Path, capsys):
    root = write_volumes(tmp_path / "data", n=5)
    image, _ = volume_case(np.random.default_rng(2))
    write_volume(root / "images" / "case_04.nii.gz", np.stack([image, image]), AFFINE)
    code, out, _ = run([str(root)], capsys)
    assert code == 2
    assert table_rows(out) == [(str(root / "images" / "case_04.nii.gz"), "has 2 channels, most cases have 1")]


def test_2d_folder_is_checked_with_the_folder_datamodule(tmp_path: Path, capsys):
    root = write_images(tmp_path / "pngs", n=6)
    code, out, _ = run([str(root)], capsys)
    assert code == 0 and "6 (train 5, val 1, test 0)" in out and "37x33" in out
    Image.fromarray(np.zeros((37, 33, 3), np.uint8)).save(root / "masks" / "case_01.png")
    (root / "images" / "case_02.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.fromarray(np.zeros((37, 33), np.uint8)).save(root / "images" / "lonely.png")
    code, out, _ = run([str(root), "--num-classes", "3", "--in-channels", "1"], capsys)
    assert code == 2
    problems = {Path(f).name: p for f, p in table_rows(out)}
    assert problems.keys() == {"case_01.png", "case_02.png", "lonely.png"}
    assert "RGB mask" in problems["case_01.png"] and "cannot be decoded" in problems["case_02.png"]
    assert problems["lonely.png"].startswith("has no mask in")


def test_a_config_is_checked_against_its_model(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = write_nnunet(tmp_path / "Dataset004", n=4, channels=1)
    config = fit_config(root, dims=3)
    config["model"]["num_classes"] = 2
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    code, out, _ = run(["c.yaml"], capsys)
    assert code == 2
    rows = table_rows(out)
    assert rows[0] == (str(root / "dataset.json"), "declares 3 labels, the model has num_classes=2")
    assert {p for _, p in rows[1:]} == {"labels [2] are outside the 2 classes 0..1"}
    assert len(rows) == 5
    other = write_nnunet(tmp_path / "Other", n=4, channels=1)
    code, out, _ = run(["c.yaml", "--model.num_classes", "3", "--data.init_args.root", str(other)], capsys)
    assert code == 0 and "4 (train 3, val 1, test 0)" in out and "background, ball, cube" in out
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_config_without_num_classes_is_checked_with_the_fit_parsers_default(tmp_path: Path, capsys):
    root = write_nnunet(tmp_path / "Dataset005", n=4, channels=1)
    config = fit_config(root, dims=3)
    del config["model"]["num_classes"]  # SegmentationTask's default: 2
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    code, out, _ = run([str(tmp_path / "c.yaml")], capsys)
    assert code == 2
    assert table_rows(out)[0] == (str(root / "dataset.json"), "declares 3 labels, the model has num_classes=2")


def test_a_config_that_does_not_parse_is_one_error_line_naming_it(tmp_path: Path, capsys):
    (tmp_path / "c.yaml").write_text("model: {num_clases: 3}\n")
    code, out, err = run([str(tmp_path / "c.yaml")], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"segpipe: error: {tmp_path / 'c.yaml'}: ") and "num_clases" in err


def test_fit_refuses_with_the_first_problem_and_the_count(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = write_volumes(tmp_path / "data", n=6)
    for name in ("case_01", "case_04"):
        (root / "labels" / f"{name}.nii.gz").write_text("not a volume")
    config = fit_config(root, dims=3)
    config["trainer"]["logger"] = False  # the corpus checks the MLflow store; this test checks the message
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", "c.yaml"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        f"segpipe: error: {root / 'labels' / 'case_01.nii.gz'}: cannot be read as a .nii.gz volume: "
        "not gzip-compressed, although it is named .nii.gz (and 1 more problems; `segpipe check-data` lists them all)"
    )
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nowhere", "nowhere: dataset folder does not exist"),
        ("empty", "empty: holds no dataset layout"),
        ("x.yaml", "config file does not exist"),
    ],
)
def test_targets_that_cannot_be_checked_are_one_error_line(tmp_path: Path, capsys, target: str, message: str):
    (tmp_path / "empty").mkdir()
    code, out, err = run([str(tmp_path / target)], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("segpipe: error: ") and message in err


@pytest.mark.slow
def test_check_data_command_in_a_subprocess_exits_2_without_a_traceback(tmp_path: Path):
    root = write_volumes(tmp_path / "data", n=4)
    (root / "labels" / "case_02.nii.gz").write_bytes(b"\x1f\x8b truncated")
    proc = subprocess.run(
        [sys.executable, "-m", "segpipe.cli", "check-data", str(root)],
        capture_output=True,
        encoding="utf-8",
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr == ""
    [row] = table_rows(proc.stdout)  # one line per problem when not on a terminal
    assert row[0] == str(root / "labels" / "case_02.nii.gz") and row[1].startswith("cannot be read as a .nii.gz volume")
