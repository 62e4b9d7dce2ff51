"""Build and install kuda_mmsa.

- kuda_mmsa._C: the C++ op library (CPU kernels always; CUDA kernels when torch has CUDA, a
  CUDA toolkit is found and a GPU is visible; FORCE_CUDA=1 builds them without a visible GPU,
  FORCE_CUDA=0 never; KUDA_MMSA_NO_EXT=1 builds none, and the exact PyTorch reference of the
  op runs instead).
- the MMSA start-up hook (a .pth file) for regular and editable installs.
"""
import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
NAME = "kuda_mmsa"
VERSION = "0.3.0"

INSTALL_REQUIRES = [
    "torch>=2.4",
    "transformers>=4.30",
    "MMSA==2.2.1",
    # the training curves and explain's figures are the first thing users look at
    "matplotlib",
    "numpy",
    "pandas",
    "easydict",
    "nvidia-ml-py3",
    "pyyaml",
    "tqdm",
]
EXTRAS = {
    # ray and optuna: the sweep tests run the embedded Ray executor and an Optuna study (they
    # skip without them); hypothesis: the property tests (tests/test_properties.py).
    "test": ["pytest", "expecttest", "ninja", "ray", "optuna", "hypothesis"],
    "plot": [],                  # matplotlib is a dependency now; kept so '.[plot]' still installs
    "ray": ["ray"],              # --executor ray: sweep cells as Ray tasks
    "optuna": ["optuna"],        # --tuner optuna: TPE with pruning, study in SQLite
}


# ---------------------------------------------------------------- extension (kernels)
# An `nvcc` on PATH outside a toolkit (a wrapper script) makes torch guess a CUDA_HOME
# without libcudart, and linking fails; the standard toolkit folder is the better guess.
if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH") and os.path.isfile("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"


def _extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    if not cpp_sources or os.environ.get("KUDA_MMSA_NO_EXT") == "1":
        return []
    try:
        visible = torch.cuda.is_available()
    except Exception:
        visible = False
    force = os.environ.get("FORCE_CUDA")
    if force is not None:
        use_cuda = force == "1"
    else:
        # The CUDA kernels take minutes to compile (most of a CPU machine's install) and only
        # run on a GPU: a CPU machine with a CUDA toolkit around does not pay for them.
        use_cuda = torch.version.cuda is not None and CUDA_HOME is not None and bool(cuda_sources) and visible
    if use_cuda and not visible and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        # No GPU to read the architecture from: torch would crash looking for one.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    # No -std here: torch's BuildExtension adds the standard its headers need (C++17 up
    # to torch 2.9, C++20 from there on); forcing one breaks newer torch.
    # -fno-trapping-math / -fno-math-errno: lets GCC if-convert and vectorise the CPU
    # kernel's exp and clamps (it never reads FP exception flags or errno).
    extra_cxx = ["-O3", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
    # torch >= 2.6's BuildExtension defines Py_LIMITED_API itself for py_limited_api
    # extensions; defining it again (with another value) only produces redefinition warnings.
    import torch.utils.cpp_extension as _ce

    define_macros = [] if hasattr(_ce, "min_supported_cpython") else [("Py_LIMITED_API", "0x03090000")]
    if use_cuda:
        return [
            CUDAExtension(
                f"{NAME}._C",
                cpp_sources + cuda_sources,
                extra_compile_args={"cxx": extra_cxx + ["-DKUDA_WITH_CUDA"],
                                    "nvcc": ["-O3", "-DKUDA_WITH_CUDA", "--use_fast_math", "-lineinfo"]},
                extra_link_args=["-fopenmp"],
                define_macros=define_macros,
                py_limited_api=True,
            )
        ]
    return [
        CppExtension(
            f"{NAME}._C",
            cpp_sources,
            extra_compile_args={"cxx": extra_cxx},
            extra_link_args=["-fopenmp"],
            define_macros=define_macros,
            py_limited_api=True,
        )
    ]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)}


# ---------------------------------------------------------------- MMSA start-up hook
# (see kuda_mmsa/cli/hook.py) kuda_mmsa/cli/kuda_mmsa_hook.pth must land at the root of
# site-packages, so that it is in the wheel's RECORD (pip uninstall removes it):
# - regular install (pip install .): build_py copies it to the root of build_lib, which
#   becomes the root of the wheel;
# - editable install (PEP 660, setuptools >= 64): the editable wheel is assembled from its
#   own temporary folder, not from build_lib, so editable_wheel adds it there.
HOOK_PTH = os.path.join("kuda_mmsa", "cli", "kuda_mmsa_hook.pth")


def _hook_cmdclass():
    import shutil

    from setuptools.command.build_py import build_py

    class build_py_with_hook(build_py):
        def run(self):
            super().run()
            if not getattr(self, "editable_mode", False):
                self.copy_file(os.path.join(ROOT, HOOK_PTH),
                               os.path.join(self.build_lib, os.path.basename(HOOK_PTH)))

    cmds = {"build_py": build_py_with_hook}
    try:
        from setuptools.command.editable_wheel import editable_wheel
    except ImportError:  # setuptools < 64: no PEP 660 editable installs
        return cmds

    class editable_wheel_with_hook(editable_wheel):
        def _run_build_commands(self, dist_name, unpacked_wheel, *args, **kwargs):
            out = super()._run_build_commands(dist_name, unpacked_wheel, *args, **kwargs)
            shutil.copyfile(os.path.join(ROOT, HOOK_PTH),
                            os.path.join(unpacked_wheel, os.path.basename(HOOK_PTH)))
            return out

    cmds["editable_wheel"] = editable_wheel_with_hook
    return cmds


setup(
    name=NAME,
    version=VERSION,
    description="KuDA multimodal sentiment model as an MMSA plugin, with fused C++/CUDA fusion kernels",
    long_description=open(os.path.join(ROOT, "README.md")).read() if os.path.exists(os.path.join(ROOT, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=[NAME, f"{NAME}.*"]) + [f"{NAME}.configs"],
    package_dir={f"{NAME}.configs": "configs"},
    package_data={f"{NAME}.configs": ["*.yaml"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    ext_modules=_extensions(),
    cmdclass={**_cmdclass(), **_hook_cmdclass()},
    entry_points={"console_scripts": ["kuda-mmsa=kuda_mmsa.cli.main:main"]},
)
