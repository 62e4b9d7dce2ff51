"""Shared fixtures: tiny demo data and the tiny BERT, built once per session in a
temporary cache (KUDA_MMSA_CACHE points there for the whole session, so nothing is
written to the user's ~/.cache)."""
import copy
import os
import pickle

import pytest
from hypothesis import settings

# Property tests (tests/test_properties.py) are deterministic: the same examples on every run
# and machine (a CI failure reproduces), no example database written into the tree, no
# deadline (timings on 2 shared cores say nothing), few examples (each builds small models).
settings.register_profile("kuda", derandomize=True, database=None, deadline=None, max_examples=25,
                          print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "kuda"))

TINY_DEMO = dict(n_train=30, n_valid=12, n_test=12, text_len=12, vision_len=8,
                 vision_dim=6, audio_len=10, audio_dim=5, text_dim=16, seed=3)


@pytest.fixture(scope="session")
def kuda_cache(tmp_path_factory):
    """A session-wide cache folder, also exported as $KUDA_MMSA_CACHE."""
    path = tmp_path_factory.mktemp("kuda_cache")
    old = os.environ.get("KUDA_MMSA_CACHE")
    os.environ["KUDA_MMSA_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("KUDA_MMSA_CACHE", None)
    else:
        os.environ["KUDA_MMSA_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_demo_pickle(kuda_cache):
    """Path of a tiny demo pickle (30/12/12 samples, MMSA layout, unimodal labels)."""
    from kuda_mmsa.data import ensure_demo_data

    return ensure_demo_data(kuda_cache, **TINY_DEMO)


@pytest.fixture(scope="session")
def tiny_demo_data(tiny_demo_pickle):
    """The tiny demo data as a dict (treat as read-only; use ``write_variant``)."""
    with open(tiny_demo_pickle, "rb") as f:
        return pickle.load(f)


@pytest.fixture(scope="session")
def tiny_bert_dir(kuda_cache):
    """Folder of the tiny demo BERT (vocab of the demo generator)."""
    from kuda_mmsa.data import ensure_demo_text_encoder

    return ensure_demo_text_encoder(kuda_cache)


@pytest.fixture
def write_variant(tiny_demo_data, tmp_path):
    """write_variant(mutate) -> path of a pickle = tiny demo data changed in place by
    mutate(data) (its return value is ignored unless it is a whole new data dict)."""
    counter = [0]

    def _write(mutate=None):
        data = copy.deepcopy(tiny_demo_data)
        if mutate is not None:
            result = mutate(data)
            data = result if isinstance(result, dict) and "train" in result else data
        counter[0] += 1
        path = tmp_path / f"variant{counter[0]}.pkl"
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=4)
        return path

    return _write


@pytest.fixture
def loader_args(tiny_demo_pickle, tiny_bert_dir):
    """MMSA-style args for kuda_mmsa.mmsa.data on the tiny demo pickle."""
    from easydict import EasyDict

    return EasyDict(
        model_name="kuda", dataset_name="demo", featurePath=str(tiny_demo_pickle),
        custom_feature=None, feature_T="", feature_A="", feature_V="", use_bert=True,
        need_data_aligned=False, need_normalized=False, batch_size=8,
        feature_dims=[64, 5, 6], _facts_feature_dims=[64, 5, 6], seq_lens=[12, 10, 8],
        pretrained=str(tiny_bert_dir),
    )
