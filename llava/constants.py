"""Special ids and token strings shared with upstream LLaVA."""

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"
IMAGE_PLACEHOLDER = "<image-placeholder>"

LOGDIR = "."

DEFAULT_SELECT_LAYER = -1
"""``mm_vision_select_layer`` when none is given (upstream's ModelArguments default; v1.5 scripts pass -2)."""
VALID_SELECT_FEATURES = ("patch", "cls_patch")
"""``mm_vision_select_feature``: drop the CLS token (``patch``) or keep it (``cls_patch``)."""
