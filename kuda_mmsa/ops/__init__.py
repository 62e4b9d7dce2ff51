"""The Python face of the kernels.

Backend selection is being built in the kernel issue; until the compiled op exists every
call runs the reference, which is exact.
"""
from .reference import ratio_cross_attention_reference


def ratio_cross_attention(q, k, v, weight, key_padding_mask=None, scale=None):
    return ratio_cross_attention_reference(q, k, v, weight, key_padding_mask, scale)


def backend():
    return {"cpu": "reference", "cuda": "reference"}


__all__ = ["ratio_cross_attention", "ratio_cross_attention_reference", "backend"]
