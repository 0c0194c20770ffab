"""The tiny shapes dataset for tests: re-exported from :mod:`llava.testing.shapes_data` (the GPU check uses it too)."""

from llava.testing.shapes_data import ShapesDataset, write_shapes_dataset

__all__ = ["ShapesDataset", "write_shapes_dataset"]
