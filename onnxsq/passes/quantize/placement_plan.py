"""The plan :func:`.placement.plan_qdq` returns: each layer's constant operands, each node's action and the
quantization points with their shared-scale groups."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WeightUse:
    """One compute layer's constant operands."""

    node: str  # node label
    op: str
    weight: str  # tensor name
    axis: int | None  # per-channel axis (None: per-tensor)
    input: str  # the activation tensor whose scale the bias follows
    output: str  # the quantization point of the layer's output
    bias: str | None = None
    bias_axis: int | None = None
    notes: list[str] = field(default_factory=list)
    attrs: dict = field(default_factory=dict)  # the node's attributes (group, strides, transA/transB)


@dataclass
class LayerEntry:
    node: str
    op: str
    action: str  # quantized | fused | shared | skipped
    reason: str = ""
    output: str | None = None  # quantization point this node produces


@dataclass
class Plan:
    activations: list[str] = field(default_factory=list)  # variable tensors that get Q → DQ
    constants: list[str] = field(default_factory=list)  # constant inputs of Add/Concat quantized from values
    groups: dict[str, str] = field(default_factory=dict)  # tensor → group root (shared scale)
    weights: list[WeightUse] = field(default_factory=list)
    layers: list[LayerEntry] = field(default_factory=list)
    # outputs of bounded functions (|y| <= 1: Sigmoid, HardSigmoid, Tanh, Softsign) → signed (Tanh, Softsign);
    # their format comes from that range (unsigned 2**-bits, signed 2**-(bits-1)), not from calibration
    bounded: dict[str, bool] = field(default_factory=dict)

    def members(self, root: str) -> list[str]:
        return [t for t, r in self.groups.items() if r == root]

    def group_roots(self) -> list[str]:
        return list(dict.fromkeys(self.groups.values()))
