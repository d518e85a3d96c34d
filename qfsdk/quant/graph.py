"""What the quantization passes need to know about a model's dataflow.

:func:`module_graph` records, from one forward pass, which module's output each module reads
(conv -> BatchNorm -> activation -> conv chains for placement, equalization and bias correction).
:func:`modularize_residual_adds` rewrites functional tensor additions (a plain ``x + y``) into
:class:`~qfsdk.models.layers.ResidualAdd` modules through torch.fx, so the module registry
quantizes their skip inputs as it does the zoo's residual adds.
"""

from __future__ import annotations

import logging
import operator
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from qfsdk.errors import ConfigError
from qfsdk.models.card import CardedGraphModule, card_of
from qfsdk.models.layers import ResidualAdd

from .modules import Quantizer

log = logging.getLogger(__name__)

ADD_TARGETS = (operator.add, operator.iadd, torch.add)
WEIGHTED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)  # a main branch ends in one of these (or a registered finisher)


@dataclass
class ModuleGraph:
    """Leaf modules in call order, and for each the names of the leaf modules whose outputs it read."""

    order: list[str] = field(default_factory=list)
    producers: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def consumers(self, name: str) -> list[str]:
        """The modules that read ``name``'s output, in call order."""
        return [m for m in self.order if name in self.producers.get(m, ())]


def module_graph(model: nn.Module, input_size: tuple[int, int], channels: int = 3) -> ModuleGraph:
    """Trace one forward pass on zeros of ``(1, channels, *input_size)`` and record leaf-module dataflow.

    Tensors made by functional ops (``torch.flatten``, ``x + y``) have no producing module, so an
    edge exists only where one module's output is another's input unchanged.
    """
    graph = ModuleGraph()
    made_by: dict[int, tuple[str, torch.Tensor]] = {}  # holding the tensors keeps their ids from being reused
    leaves = {name: m for name, m in model.named_modules() if name and _is_leaf(m)}

    def before(name: str):
        def hook(_module, args):
            graph.order.append(name)
            for arg in args:
                if isinstance(arg, torch.Tensor) and id(arg) in made_by:
                    graph.producers[name].append(made_by[id(arg)][0])
        return hook

    def after(name: str):
        def hook(_module, _args, out):
            if isinstance(out, torch.Tensor):
                made_by[id(out)] = (name, out)
        return hook

    hooks = [m.register_forward_pre_hook(before(n)) for n, m in leaves.items()]
    hooks += [m.register_forward_hook(after(n)) for n, m in leaves.items()]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, *input_size))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return graph


def _is_leaf(module: nn.Module) -> bool:
    """A module without submodules other than quantizers (a converted conv is still one layer)."""
    return not isinstance(module, Quantizer) and all(isinstance(child, Quantizer) for child in module.children())


def traced_graph(model: nn.Module, why: str) -> ModuleGraph:
    """:func:`module_graph` on the input size of the model's contract; ``why`` names what needs it
    in the error for a model without one."""
    card = card_of(model, required=False)
    if card is None or card.contract is None:
        raise ConfigError(f"{why} traces {type(model).__name__} on its contract's input size, and it has "
                          "no contract: describe it first with qfsdk.models.describe(model, FaceContract(...))")
    return module_graph(model, card.contract.input_size)


class _LeafTracer(fx.Tracer):
    """Keeps modules without submodules (layers such as dlib's affine) and residual adds as one call."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, ResidualAdd) or not any(True for _ in module.children()) or super().is_leaf_module(module, qualified_name)


def _input_dependent(graph: fx.Graph) -> set[fx.Node]:
    """Nodes whose value depends on the model's input (not only on parameters and constants)."""
    dependent: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(arg in dependent for arg in node.all_input_nodes):
            dependent.add(node)
    return dependent


def _is_tensor_add(node: fx.Node, dependent: set[fx.Node]) -> bool:
    """``a + b`` of two activations (a bias or a constant added to one activation is not a residual)."""
    return (
        node.op == "call_function"
        and node.target in ADD_TARGETS
        and len(node.args) == 2
        and not node.kwargs
        and all(isinstance(a, fx.Node) and a in dependent for a in node.args)
    )


def _ends_a_branch(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and isinstance(modules.get(str(node.target)), WEIGHTED)


def modularize_residual_adds(model: nn.Module) -> nn.Module:
    """``model`` with each functional tensor add as a ``ResidualAdd`` module named ``residual_add_K``.

    The skip input is the operand that does not come straight from a conv/linear/BatchNorm (the
    second one when both or neither do). A GraphModule (an imported graph) is rewritten in place;
    another model is traced symbolically and returned as a new GraphModule if it has such adds.
    ``model`` itself comes back when it has none or cannot be traced (data-dependent control flow).
    """
    if isinstance(model, fx.GraphModule):
        graph = model.graph
    else:
        try:
            graph = _LeafTracer().trace(model)
        except Exception as exc:  # noqa: BLE001 -- any trace failure just means "no functional adds found"
            log.warning("%s is not symbolically traceable (%s): its functional adds (if any) stay unquantized",
                        type(model).__name__, str(exc).splitlines()[0])
            return model
    dependent = _input_dependent(graph)
    adds = [node for node in graph.nodes if _is_tensor_add(node, dependent)]
    if not adds:
        return model
    modules = dict(model.named_modules())
    module = model if isinstance(model, fx.GraphModule) else CardedGraphModule(model, graph, class_name=type(model).__name__)
    for index, node in enumerate(adds):
        main, skip = node.args
        if _ends_a_branch(skip, modules) and not _ends_a_branch(main, modules):
            main, skip = skip, main
        name = f"residual_add_{index}"
        module.add_module(name, ResidualAdd())
        with graph.inserting_after(node):
            call = graph.call_module(name, (main, skip))
        node.replace_all_uses_with(call)
        graph.erase_node(node)
    module.recompile()
    log.info("%s: %d functional residual add(s) made quantizable", type(model).__name__, len(adds))
    return module
