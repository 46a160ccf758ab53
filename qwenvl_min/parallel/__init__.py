"""Beyond one process: tensor parallelism over DTensor, sharded loading, torchrun entry points.

- `plan`: the TP plan of every family (`parallelize(model, mesh)`, `check_tp_degree`).
- `sharded_load`: `load_sharded(path, mesh)`, each rank reading only its slices.
- `taps`: taps on a TP model return / take the single-process tensors.
- `launch`: joining a torchrun job (`init_distributed`, `tp_mesh`), gloo on CPU, NCCL on CUDA.
See docs/distributed.md.
"""

from .launch import DistContext, init_distributed, launched_distributed, tp_mesh
from .plan import TensorParallelError, check_tp_degree, parallelize, tp_plan
from .sharded_load import load_sharded

__all__ = [
    "DistContext",
    "TensorParallelError",
    "check_tp_degree",
    "init_distributed",
    "launched_distributed",
    "load_sharded",
    "parallelize",
    "tp_mesh",
    "tp_plan",
]
