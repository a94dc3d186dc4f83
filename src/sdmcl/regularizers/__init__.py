"""Regularizers, one file each. Importing this package registers them."""

from sdmcl.registry import register_regularizer
from sdmcl.regularizers.base import Regularizer, RegularizerConfig


@register_regularizer("none", RegularizerConfig, "no regularizer")
def build_none(cfg: RegularizerConfig, model) -> Regularizer:
    return Regularizer(cfg, model)


from sdmcl.regularizers import ewc, l2, mas, si  # noqa: E402,F401
