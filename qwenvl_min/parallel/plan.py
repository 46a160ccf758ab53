"""The tensor-parallel plan of every family over the module tree, applied with DTensor.

`parallelize(model, mesh)` shards a `QwenVL` over a 1-D device mesh of `tp` ranks with
`torch.distributed.tensor.parallel.parallelize_module` (the torchtitan recipe: column-parallel projections
into a block, a row-parallel projection out of it, one all-reduce per pair):

| module                                   | style                  | weight placement        | comm (per call)  |
|------------------------------------------|------------------------|-------------------------|------------------|
| visual.blocks.{i}.attn.qkv               | FusedQKVColwise        | _StridedShard(0, sf=3)  | -                |
| visual.blocks.{i}.attn.proj              | RowwiseParallel        | Shard(1)                | all-reduce (N,D) |
| visual.blocks.{i}.mlp.fc1 / gate, up     | ColwiseParallel        | Shard(0)                | -                |
| visual.blocks.{i}.mlp.fc2 / down         | RowwiseParallel        | Shard(1)                | all-reduce (N,D) |
| visual.merger.fc1 / fc2                  | Colwise / Rowwise      | Shard(0) / Shard(1)     | all-reduce (M,E) |
| visual.deepstack_mergers.{k}.fc1 / fc2   | Colwise / Rowwise      | Shard(0) / Shard(1)     | all-reduce (M,E) |
| text.embed_tokens                        | RowwiseParallel        | Shard(0) (vocab)        | all-reduce (B,T,E)|
| text.layers.{i}.attn.q_proj              | ColwiseParallel        | Shard(0) (heads)        | -                |
| text.layers.{i}.attn.k_proj / v_proj     | Colwise or KVHeadReplicated | Shard(0) / Replicate | -             |
| text.layers.{i}.attn.o_proj              | RowwiseParallel        | Shard(1)                | all-reduce (B,T,E)|
| text.layers.{i}.mlp.gate/up, down        | Colwise, Rowwise       | Shard(0), Shard(1)      | all-reduce (B,T,E)|
| text.layers.{i}.mlp.experts (MoE)        | ExpertsSharded         | gate_up _StridedShard(1, sf=2), down Shard(2) | all-reduce (S,E) |
| lm_head (untied)                         | ColwiseParallel -> Replicate | Shard(0) (vocab)  | all-gather (B,T,V)|
| tied head (`lm_head`, a `TiedLMHead`)   | the embedding's Shard(0) rows | -                | all-gather (B,T,V)|

Everything else (patch embedding, learned positions, norms, Qwen3's per-head q / k norms, the MoE router) is
replicated: small, and every rank needs the full activations between blocks anyway. Activations between modules are plain local tensors (`use_local_output`), so the
model code runs unchanged on local heads: rotary, the attention functions (torch path and the Triton
kernels), the KV cache (it stores this rank's kv heads) and generation (every rank gets the full logits
and picks the same token).

Fused qkv: the weight is (3*D, D) laid out [q | k | v], each head-major. A plain Shard(0) would give rank
0 all of q. `_StridedShard(0, split_factor=3)` is DTensor's own placement for "split into 3 chunks, shard
each chunk, concatenate the pieces": rank r holds rows [q_r | k_r | v_r] (its heads of each), which is
exactly the weight view (3, heads, head_dim, D) sharded on heads, and `full_tensor()` is still the
original weight. The local output (N, 3*D/tp) keeps the [q | k | v] layout the module's `view(n, 3, -1,
head_dim)` expects. (`_StridedShard` is private in torch 2.13; tests cover it on the pinned version.)

MoE experts (Qwen3-VL-MoE) are sharded on their width I: the fused gate_up_proj (n, 2I, E) holds [gate |
up] rows per expert, so `_StridedShard(1, split_factor=2)` gives rank r [gate_r | up_r] (its columns of
both), and down_proj (n, E, I) is `Shard(2)`: each rank runs every chosen expert on its slice of I and
the partial outputs are summed (one all-reduce per sparse layer). Routing is replicated, so every rank
picks the same experts.

GQA: with G kv heads, `tp` dividing G shards k/v by heads (query head i keeps using kv head i // (H/G)
locally). With `tp` a multiple of G, each rank's H/tp query heads all use one kv head, r // (tp/G): k/v
stay replicated (`KVHeadReplicated`) and the rank keeps that head's output. Any other `tp` is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.distributed.tensor.parallel.style import ParallelStyle
from torch.distributed.tensor.placement_types import _StridedShard

from ..model.config import Config
from ..utils.hooks import hook_ids, mark_own_hooks


class TensorParallelError(ValueError):
    """A tensor-parallel degree (or launch) that does not fit the model."""


# ---- divisibility -----------------------------------------------------------------------------------------
def kv_heads_sharded(config: Config, tp: int) -> bool:
    """True when `tp` splits the kv heads, False when each rank keeps one replicated kv head."""
    return config.text.num_kv_heads % tp == 0


def check_tp_degree(config: Config, tp: int) -> None:
    """Raise TensorParallelError naming the first dimension `tp` does not divide."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise TensorParallelError(f"the tensor-parallel degree must be an integer >= 1, got {tp!r}")
    v, t = config.vision, config.text
    dims = [
        ("vision num_heads", v.num_heads),
        ("vision mlp_hidden (fc1 / gate / up width)", v.mlp_hidden),
        ("vision merger width (4 * width)", v.width * v.merge_size**2),
        ("text num_heads", t.num_heads),
        ("text intermediate_size", t.intermediate_size),
        ("text vocab_size", t.vocab_size),
    ]
    if t.moe is not None:
        dims.append(("MoE expert width (moe_intermediate_size)", t.moe.expert_hidden))
    for what, size in dims:
        if size % tp:
            raise TensorParallelError(
                f"tensor-parallel degree {tp} does not divide the {what} = {size}; choose a TP degree "
                f"that divides it"
            )
    g = t.num_kv_heads
    if g % tp and tp % g:
        raise TensorParallelError(
            f"tensor-parallel degree {tp} neither divides the text num_kv_heads = {g} nor is a multiple "
            "of it; choose a TP degree that divides it (kv heads sharded) or a multiple of it (replicated)"
        )


# ---- custom styles ----------------------------------------------------------------------------------------
def _local_output(mod: nn.Module, outputs: DTensor, device_mesh: DeviceMesh) -> Tensor:
    return outputs.to_local()


class FusedQKVColwise(ColwiseParallel):
    """Column parallel for a fused [q | k | v] Linear, sharded by heads inside each of q, k and v."""

    def _partition_linear_fn(self, name: str, module: nn.Module, device_mesh: DeviceMesh) -> None:
        for key, param in module.named_parameters():
            placement = _StridedShard(0, split_factor=3)  # rows [q_r | k_r | v_r] on rank r
            shard = distribute_tensor(param, device_mesh, [placement], src_data_rank=self.src_data_rank)
            module.register_parameter(key, nn.Parameter(shard, requires_grad=param.requires_grad))

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        if not isinstance(module, nn.Linear) or module.out_features % 3:
            raise TypeError(f"FusedQKVColwise needs an nn.Linear with 3 * width outputs, got {module}")
        input_fn = partial(self._prepare_input_fn, self.input_layouts, self.desired_input_layouts)
        # the output stays strided-sharded: to_local gives this rank's [q_r | k_r | v_r], no communication
        return distribute_module(module, device_mesh, self._partition_linear_fn, input_fn, _local_output)


class KVHeadReplicated(ParallelStyle):
    """k_proj / v_proj when the TP degree is a multiple of the kv heads: the weights are replicated and
    each rank keeps the output of the one kv head its query heads use (`head` of width `head_dim`)."""

    def __init__(self, head: int, head_dim: int) -> None:
        super().__init__()
        self.head, self.head_dim = head, head_dim

    def _input_fn(self, mod: nn.Module, inputs: tuple[Tensor, ...], device_mesh: DeviceMesh) -> DTensor:
        return DTensor.from_local(inputs[0], device_mesh, [Replicate()], run_check=False)

    def _output_fn(self, mod: nn.Module, outputs: DTensor, device_mesh: DeviceMesh) -> Tensor:
        start = self.head * self.head_dim
        return outputs.to_local()[..., start : start + self.head_dim]

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        # partition_fn None: distribute_module replicates every parameter
        return distribute_module(module, device_mesh, None, self._input_fn, self._output_fn)


class ExpertsSharded(ParallelStyle):
    """The fused MoE experts sharded on their width (see the module docstring): the local gate_up rows are
    [gate_r | up_r], the local down columns the matching r-th slice, and the experts' output, a partial
    sum on every rank, is all-reduced. Inputs (tokens, routing) arrive replicated as plain tensors."""

    def _partition(self, name: str, module: nn.Module, device_mesh: DeviceMesh) -> None:
        for key, placement in (("gate_up_proj", _StridedShard(1, split_factor=2)), ("down_proj", Shard(2))):
            param = getattr(module, key)
            shard = distribute_tensor(param, device_mesh, [placement], src_data_rank=self.src_data_rank)
            module.register_parameter(key, nn.Parameter(shard, requires_grad=param.requires_grad))

    def _output_fn(self, mod: nn.Module, outputs: Tensor, device_mesh: DeviceMesh) -> Tensor:
        partial = DTensor.from_local(outputs, device_mesh, [Partial()], run_check=False)
        return partial.redistribute(placements=[Replicate()]).to_local()

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return distribute_module(module, device_mesh, self._partition, None, self._output_fn)


# ---- the plan ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TapShard:
    """How the local tensor at a tap point is a shard of the single-process one (for `parallel.taps`).

    kind: "last" (sharded on the last dim, rank order), "qkv" (last dim [q_r | k_r | v_r]), "heads"
    (dim 1 of attention maps sharded by heads), "kv_head" (one replicated kv head of the last dim).
    """

    kind: str
    group: int = 1  # kv_head: ranks sharing one kv head (tp / G)
    dim: int = -1  # "last" / "kv_head": the sharded dim (-2: the heads of a per-head view, Qwen3's q/k norms)


def tp_plan(config: Config, tp: int, rank: int) -> dict[str, ParallelStyle]:
    """Module path -> ParallelStyle for `parallelize_module` (checks `tp` first)."""
    check_tp_degree(config, tp)
    plan: dict[str, ParallelStyle] = {}
    for i in range(config.vision.depth):
        block = f"visual.blocks.{i}"
        plan[f"{block}.attn.qkv"] = FusedQKVColwise()
        plan[f"{block}.attn.proj"] = RowwiseParallel()
        if config.vision.family in ("qwen2_vl", "qwen3_vl"):
            plan[f"{block}.mlp.fc1"] = ColwiseParallel()
            plan[f"{block}.mlp.fc2"] = RowwiseParallel()
        else:
            plan[f"{block}.mlp.gate_proj"] = ColwiseParallel()
            plan[f"{block}.mlp.up_proj"] = ColwiseParallel()
            plan[f"{block}.mlp.down_proj"] = RowwiseParallel()
    for merger in ["visual.merger"] + [
        f"visual.deepstack_mergers.{k}" for k in range(len(config.vision.deepstack_indexes))
    ]:
        plan[f"{merger}.fc1"] = ColwiseParallel()
        plan[f"{merger}.fc2"] = RowwiseParallel()
    # vocab-parallel embedding: each rank looks up the ids in its rows (others masked to 0), all-reduce
    plan["text.embed_tokens"] = RowwiseParallel(input_layouts=Replicate())
    sharded_kv = kv_heads_sharded(config, tp)
    for i in range(config.text.num_layers):
        layer = f"text.layers.{i}"
        plan[f"{layer}.attn.q_proj"] = ColwiseParallel()
        for name in ("k_proj", "v_proj"):
            plan[f"{layer}.attn.{name}"] = (
                ColwiseParallel()
                if sharded_kv
                else KVHeadReplicated(rank // (tp // config.text.num_kv_heads), config.text.head_dim)
            )
        plan[f"{layer}.attn.o_proj"] = RowwiseParallel()
        if config.text.is_sparse(i):
            plan[f"{layer}.mlp.experts"] = ExpertsSharded()
            continue
        plan[f"{layer}.mlp.gate_proj"] = ColwiseParallel()
        plan[f"{layer}.mlp.up_proj"] = ColwiseParallel()
        plan[f"{layer}.mlp.down_proj"] = RowwiseParallel()
    if not config.text.tie_word_embeddings:
        plan["lm_head"] = ColwiseParallel(output_layouts=Replicate())  # every rank gets the full logits
    return plan


def tap_shards(config: Config, tp: int) -> dict[str, TapShard]:
    """Tap name -> TapShard for every tap point whose local tensor is a shard; all others are full."""
    shards: dict[str, TapShard] = {}
    plan = tp_plan(config, tp, 0)
    for path, style in plan.items():
        if isinstance(style, FusedQKVColwise):
            shards[path] = TapShard("qkv")
        elif isinstance(style, KVHeadReplicated):
            shards[path] = TapShard("kv_head", tp // config.text.num_kv_heads)
        elif isinstance(style, ColwiseParallel) and path != "lm_head":
            shards[path] = TapShard("last")
        elif isinstance(style, RowwiseParallel) and path != "text.embed_tokens":
            shards[path + ".input"] = TapShard("last")
    for i in range(config.vision.depth):
        shards[f"visual.blocks.{i}.attn.probs"] = TapShard("heads")
    for i in range(config.text.num_layers):
        shards[f"text.layers.{i}.attn.probs"] = TapShard("heads")
        if config.text.qk_norm:  # (B, T, local heads, Dh) in and out: the heads are sharded (dim -2)
            k_shard = (
                TapShard("last", dim=-2)
                if kv_heads_sharded(config, tp)
                else TapShard("kv_head", tp // config.text.num_kv_heads, dim=-2)
            )
            for name, shard in (("q_norm", TapShard("last", dim=-2)), ("k_norm", k_shard)):
                shards[f"text.layers.{i}.attn.{name}"] = shards[f"text.layers.{i}.attn.{name}.input"] = shard
    return shards


def parallelize(model: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Shard `model` (a QwenVL, on any device including meta) in place over the 1-D `mesh`; returns it.

    The model stays a plain `QwenVL`: its parameters become DTensors and the plan's modules get the
    input / output hooks of their parallel styles. Those hooks are recorded as the library's own
    (`qwenvl_min.utils.hooks`), so compiled generation accepts them; taps find the mesh from the DTensor
    parameters and gather sharded tap points (`parallel.taps`).
    """
    if mesh.ndim != 1:
        raise TensorParallelError(f"tensor parallelism takes a 1-D device mesh, got {mesh.ndim}-D")
    tp = mesh.size()
    plan = tp_plan(model.config, tp, mesh.get_local_rank())
    before = {module: hook_ids(module) for module in model.modules()}
    parallelize_module(model, mesh, plan)
    for module in model.modules():
        mark_own_hooks(module, hook_ids(module) - before.get(module, frozenset()))
    return model
