"""Dataset tooling: the dataset doctor (``python -m llava.data.doctor``)."""
