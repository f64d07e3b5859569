"""actionlab's methods: pure PyTorch + timm. Importing a method's module registers it."""

from . import tsn, tsm  # noqa: F401  (registration)
from . import i3d, r2plus1d, r3d, s3d, tam  # noqa: F401  (registration)
from . import sllm, hsar  # noqa: F401
from . import svmix, afnet  # noqa: F401
from . import mvitv2, uniformer, h2cn  # noqa: F401
from .registry import InputFormat, WorkloadSpec, get_workload, list_workloads, register_workload

__all__ = ["InputFormat", "WorkloadSpec", "get_workload", "list_workloads", "register_workload"]
