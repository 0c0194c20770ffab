"""The "Mysterious Projections" probe (arXiv 2402.16832): how much domain information do image tokens keep?

For each checkpoint, image features are taken before the projector (the vision tower's selected features)
and after it (:meth:`encode_images`, so every add-on flag is honoured), pooled (mean over tokens, or all
tokens concatenated), and an independent MLP classifier is trained on them to predict the image's label,
with k-fold cross-validation. Macro-F1 and accuracy (mean ± std over folds) are reported per checkpoint and
per representation, next to a majority-class baseline. See ``python -m llava.probe --help`` and
docs/three_stage.md.
"""

from llava.probe.classifier import ProbeSettings, cross_validate, macro_f1, stratified_folds
from llava.probe.features import extract_features, list_labelled_images

__all__ = ["ProbeSettings", "cross_validate", "extract_features", "list_labelled_images", "macro_f1",
           "stratified_folds"]
