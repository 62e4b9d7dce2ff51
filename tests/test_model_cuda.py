"""KuDA on a CUDA GPU (skipped without one): the same numbers as on CPU, the fused CUDA op in
use, and weights saved on the GPU loading on a CPU-only machine."""
import pytest
import torch

from kuda_mmsa import ops
from kuda_mmsa.training.checkpoints import atomic_save, cpu_state_dict

from test_model import make_batch, make_model  # tests/ is on sys.path (pytest rootdir-relative)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@cuda
@pytest.mark.parametrize("mode", ["dynamic", "reference"])
def test_kuda_on_cuda_matches_cpu(mode):
    cpu_model = make_model(fusion_mode=mode).train()
    gpu_model = make_model(fusion_mode=mode).train().cuda()
    gpu_model.load_state_dict(cpu_model.state_dict())
    inputs, labels = make_batch()
    out_c = cpu_model(**inputs, labels=labels)
    out_g = gpu_model(**{k: v.cuda() for k, v in inputs.items()}, labels=labels.cuda())
    for k in ("M", "T", "V", "A", "ratio", "ce"):
        torch.testing.assert_close(out_g[k].cpu(), out_c[k], atol=2e-4, rtol=2e-4)
    (out_c["M"].sum() + out_c["ce"]).backward()
    (out_g["M"].sum() + out_g["ce"]).backward()
    for (name, pc), (_, pg) in zip(cpu_model.named_parameters(), gpu_model.named_parameters()):
        if pc.grad is not None:
            torch.testing.assert_close(pg.grad.cpu(), pc.grad, atol=1e-3, rtol=1e-3, msg=name)


def _extension_has_cuda_kernels() -> bool:
    """Whether the built kuda_mmsa._C holds the CUDA kernels (their names are in the binary),
    read from the file itself, not from what the loader made of it."""
    import glob
    import os

    import kuda_mmsa

    libs = glob.glob(os.path.join(os.path.dirname(kuda_mmsa.__file__), "_C*.so"))
    return any(b"rca_bwd_pre_kernel" in open(f, "rb").read() for f in libs)


@cuda
def test_cuda_uses_the_compiled_kernel_when_built():
    """A build with CUDA kernels must serve CUDA tensors with them: a load failure that fell
    back to the reference would fail here (it cannot skip)."""
    if not _extension_has_cuda_kernels():
        assert ops.backend()["cuda"] == "reference"
        pytest.skip("extension built without CUDA kernels")
    assert ops.backend()["cuda"] in ("compiled", "jit"), ops.backend()


@cuda
def test_weights_saved_on_gpu_load_on_cpu(tmp_path):
    gpu_model = make_model().cuda()
    path = atomic_save(cpu_state_dict(gpu_model), tmp_path / "w.pth")
    raw = tmp_path / "raw.pth"
    torch.save(gpu_model.state_dict(), raw)  # what a user's own torch.save would write
    for f in (path, raw):
        cpu_model = make_model(seed=5)
        cpu_model.load_state_dict(torch.load(f, map_location="cpu"))
        for (n, a), (_, b) in zip(cpu_model.state_dict().items(), gpu_model.state_dict().items()):
            torch.testing.assert_close(a, b.cpu(), msg=n)
