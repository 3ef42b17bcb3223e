"""``segpipe predict`` on a folder with a DICOM series: a DICOM-SEG beside NIfTI masks for the other inputs."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import yaml
from builders import AFFINE, SHAPE, blob_case, seg_labels_volume, tiny_3d_config, write_dicom_series, write_volumes
from pydicom.uid import SegmentationStorage

from segpipe.cli import main
from segpipe.io.volumes import write_volume

CLASS_NAMES = ["background", "ball", "cube"]


@pytest.mark.slow
def test_predict_writes_a_dicom_seg_for_a_dicom_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    monkeypatch.chdir(tmp_path)
    config = tiny_3d_config(write_volumes(tmp_path / "data", n=4))
    config["trainer"] |= {"max_epochs": 1, "limit_train_batches": 2, "logger": False}
    config["model"]["class_names"] = CLASS_NAMES
    config["data"]["init_args"] |= {"test_fraction": 0.0, "cache": False}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", "tiny.yaml"]) == 0
    [checkpoint] = sorted(Path("outputs").rglob("last.ckpt"))

    rng = np.random.default_rng(7)
    write_dicom_series(tmp_path / "scans" / "series", np.round(blob_case(rng)[0]), AFFINE)
    write_volume(tmp_path / "scans" / "volume.nii.gz", blob_case(rng)[0], AFFINE)
    predict = ["predict", "--config", "tiny.yaml", "--ckpt_path", str(checkpoint), "--data.init_args.predict_dir"]

    assert main([*predict, "scans", "--predict_writer.output_dir", "auto"]) == 0
    assert sorted(p.name for p in Path("auto").iterdir()) == ["series.dcm", "volume.nii.gz"]
    seg = hd.seg.segread("auto/series.dcm")
    source = pydicom.dcmread(next((tmp_path / "scans" / "series").iterdir()))
    assert seg.SOPClassUID == SegmentationStorage
    assert [seg.get_segment_description(k).segment_label for k in (1, 2)] == ["ball", "cube"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID

    # The same prediction as NIfTI: the SEG re-imported on the series' grid equals it voxel for voxel.
    args = ["scans", "--predict_writer.output_dir", "nifti", "--predict_writer.format", "nifti"]
    assert main([*predict, *args]) == 0
    nifti = nib.load("nifti/series.nii.gz")
    np.testing.assert_allclose(nifti.affine, AFFINE, atol=1e-5)
    reimported = seg_labels_volume(Path("auto/series.dcm"), tmp_path / "scans" / "series", nifti.affine, SHAPE)
    np.testing.assert_array_equal(reimported, np.asanyarray(nifti.dataobj))

    # dicom_seg for every input: the NIfTI one is refused with one line, before anything is written.
    capsys.readouterr()
    args = ["scans", "--predict_writer.output_dir", "refused", "--predict_writer.format", "dicom_seg"]
    assert main([*predict, *args]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("segpipe: error: ") and "volume.nii.gz: is not a DICOM series" in error
    assert "\n" not in error and not Path("refused").exists()
