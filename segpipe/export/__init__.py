"""Export trained networks for deployment outside Python: ONNX and TorchScript with preprocessing metadata."""

from segpipe.export.exporter import FORMATS, ExportResult, export_checkpoint

__all__ = ["FORMATS", "ExportResult", "export_checkpoint"]
