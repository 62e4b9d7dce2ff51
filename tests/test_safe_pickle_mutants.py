"""kuda_mmsa.data.safe_pickle, in-process: the refusal names the file it came from, and the
pickle stand-in handed to MMSA's loader restricts both load and loads (the module's promise:
no path reads a feature file with plain pickle)."""
import io
import os
import pickle

import numpy as np
import pytest

from kuda_mmsa.data import safe_pickle
from kuda_mmsa.errors import KudaInputError


class _Payload:
    """Unpickling this would call os.system: the attack the module exists to stop."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_the_refusal_names_the_opened_file_unless_a_name_is_given(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Payload()))
    with open(path, "rb") as f, pytest.raises(KudaInputError) as e:
        safe_pickle.load(f)
    assert f"'{path}'" in str(e.value) and "system" in str(e.value)
    with open(path, "rb") as f, pytest.raises(KudaInputError) as e:
        safe_pickle.load(f, "features/mosi.pkl")
    assert "'features/mosi.pkl'" in str(e.value) and str(path) not in str(e.value)
    with pytest.raises(KudaInputError) as e:
        safe_pickle.load(io.BytesIO(pickle.dumps(_Payload())))
    assert "'<stream>'" in str(e.value)


def test_the_pickle_stand_in_reads_arrays_and_refuses_code_in_load_and_loads():
    module = safe_pickle.SafePickleModule
    data = {"train": {"audio": np.arange(6, dtype=np.float32).reshape(2, 3), "id": ["a", "b"]}}
    blob = pickle.dumps(data, protocol=4)
    for got in (module.loads(blob), module.load(io.BytesIO(blob))):
        assert got["train"]["id"] == ["a", "b"]
        assert got["train"]["audio"].tolist() == [[0, 1, 2], [3, 4, 5]]
    evil = pickle.dumps(_Payload())
    with pytest.raises(KudaInputError):
        module.loads(evil)
    with pytest.raises(KudaInputError):
        module.load(io.BytesIO(evil))
