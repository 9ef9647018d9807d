"""Which wheels a lent GPU machine needs for the GPU check: overnight's dependencies and its `[gpu]` extra, plus
what their own requirements bring, minus what the machine's image already holds.

    python bench/gpu_wheels.py            # prints NAME==VERSION lines (bench/gpu_wheels.sh downloads them)

Versions: the pin in constraints.txt (what CI tested), else the version installed in this venv, else none (pip takes
the newest: liger-kernel, which needs CUDA and is not installed on a CPU machine). A package the image has is not
carried, nor are its requirements: the image's copy works with its own (carrying a second version of torch,
transformers, … would replace the image's CUDA build).
"""
from __future__ import annotations

import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# The device image 'cuda' (nvidia-h100-x1, nvidia-h200), as the device tool's KINDS.md listed it on 2026-11-17
# ("Python packages already there"); python3 there is 3.12.3.
IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx humanize
huggingface-hub hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex
requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
# Carried although the image has them: small, pure Python, and the image's versions are unknown; the check of
# 2026-11-28 needed newer ones there for the CLI (click) and the dashboard (textual's rich, markdown-it-py, pygments).
CARRY_ANYWAY = {"click", "rich", "markdown-it-py", "mdurl", "pygments"}
# the device's interpreter (KINDS.md: Python 3.12.3), for the environment markers of the requirements
DEVICE_ENV = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
              "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
              "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def top_level() -> list[Requirement]:
    """overnight's runtime dependencies and its [gpu] extra, from pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["gpu"]]]


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            out[canonicalize_name(name)] = version
    return out


def needed() -> dict[str, str | None]:
    """name -> version (None: the newest) of every package to carry."""
    image = {canonicalize_name(n) for n in IMAGE} - CARRY_ANYWAY
    pinned, found, walked = pins(), {}, set()
    todo = top_level()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        seen = (name, frozenset(req.extras))  # markdown-it-py[linkify] brings more than markdown-it-py
        if name in image or seen in walked or (req.marker and not req.marker.evaluate({**DEVICE_ENV, "extra": ""})):
            continue
        walked.add(seen)
        try:
            dist = md.distribution(name)
            version, requires = dist.version, dist.requires or []
        except md.PackageNotFoundError:
            version, requires = None, []  # not installed here: pip takes the newest (its requirements: see below)
        found[name] = pinned.get(name, version)
        for r in requires:
            sub = Requirement(r)
            extras = {"", *req.extras}
            if sub.marker is None or any(sub.marker.evaluate({**DEVICE_ENV, "extra": e}) for e in extras):
                sub.marker = None  # decided here, with the extras that brought it
                todo.append(sub)
    return found


if __name__ == "__main__":
    for name, version in sorted(needed().items()):
        print(f"{name}=={version}" if version else name)
    sys.exit(0)
