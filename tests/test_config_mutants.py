"""KuDAConfig refuses shapes the network cannot be built with (model/config.py), with one
clear error naming the keys and what was found, instead of a failure deep in a layer."""
import pytest

from kuda_mmsa.errors import KudaInputError
from test_model import make_config


@pytest.mark.parametrize("over", [dict(feature_dims=[32, 8]), dict(seq_lens=[12, 10, 8, 4])])
def test_dims_and_lengths_must_list_three_modalities(over):
    with pytest.raises(KudaInputError, match=r"feature_dims and seq_lens must list 3 values in MMSA's order"):
        make_config(**over)


@pytest.mark.parametrize("over, name", [
    (dict(hidden_size=30, fusion_heads=4), "hidden_size / fusion_heads"),
    (dict(av_hidden_size=18, av_heads=2, adapter_heads=2), "av_hidden_size/2 / adapter_heads"),   # 9 of 2
    (dict(av_hidden_size=12, av_heads=4, adapter_heads=4), "av_hidden_size/2 / adapter_heads"),   # 6 of 4
])
def test_a_width_the_heads_do_not_divide_is_refused(over, name):
    with pytest.raises(KudaInputError, match=rf"Config {name.replace('/', '/')}: width \d+ is not divisible"):
        make_config(**over)
