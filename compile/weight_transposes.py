"""Weights that the graph transposes, read already transposed.

``torch.onnx`` writes ``x @ W.T`` (every ``nn.Linear``) as ``MatMul(x, Transpose(W))`` with ``W`` an
initializer. TVM's importer first turns every initializer into a Relax constant and then, at each
such Transpose, folds a transposed copy: until the import ends, every transposed weight is held
twice, plus the numpy copy the fold goes through (gpt base: 0.5 GB of weights, 1.5 GB of import
peak). Here each ``Transpose(initializer)`` becomes an initializer of the transposed shape whose
bytes are the original's, transposed when the importer reads them (``read_weight``), one tensor at
a time. An initializer that nothing else reads leaves the graph, so each weight becomes one
constant, in the layout the graph uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransposedWeight:
    """An initializer whose stored bytes are another shape's, to be transposed when read."""

    stored_dims: tuple[int, ...]  # the shape of the bytes in the tensor's data
    perm: tuple[int, ...]  # ONNX Transpose's ``perm``: output axis i is stored axis perm[i]


def fold_weight_transposes(model) -> dict[str, TransposedWeight]:
    """Rewrite each ``Transpose`` of an initializer in ``model`` (a ModelProto, in place) as an
    initializer; returns the new initializers' names with how to read them."""
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    outputs = {value.name for value in graph.output}
    folds = [node for node in graph.node
             if node.op_type == "Transpose" and node.input and node.input[0] in weights
             and node.output[0] not in outputs]
    if not folds:
        return {}
    transposed: dict[str, TransposedWeight] = {}
    for node in folds:
        source = weights[node.input[0]]
        stored = tuple(int(d) for d in source.dims)
        perm = _perm(node, len(stored))
        folded = graph.initializer.add()
        folded.CopyFrom(source)  # the same bytes: inline data, or the same external file and offset
        folded.name = node.output[0]
        del folded.dims[:]
        folded.dims.extend(stored[axis] for axis in perm)
        transposed[folded.name] = TransposedWeight(stored, perm)
        graph.node.remove(node)
    read = {name for node in graph.node for name in node.input}
    read |= {name for node in graph.node for body in _subgraphs(node) for name in _graph_reads(body)}
    unread = [init for init in graph.initializer if init.name not in read and init.name not in outputs]
    for init in unread:
        graph.initializer.remove(init)
    logger.info("Read %d transposed weight(s) already transposed (%d original(s) no longer needed).",
                len(transposed), len(unread))
    return transposed


def read_weight(array: np.ndarray, how: TransposedWeight) -> np.ndarray:
    """The tensor ``how`` describes, from ``array`` (its stored bytes, any shape of the same size)."""
    # [stored_dims] -> [stored_dims[perm]], contiguous: the importer copies it into a constant
    return np.ascontiguousarray(array.reshape(how.stored_dims).transpose(how.perm))


def _perm(node, rank: int) -> tuple[int, ...]:
    for attr in node.attribute:
        if attr.name == "perm":
            return tuple(int(axis) for axis in attr.ints)
    return tuple(reversed(range(rank)))  # ONNX's default: reverse the axes


def _subgraphs(node) -> list:
    """The bodies of an If, Loop or Scan node."""
    bodies = []
    for attr in node.attribute:
        if attr.HasField("g"):
            bodies.append(attr.g)
        bodies.extend(attr.graphs)
    return bodies


def _graph_reads(graph) -> set[str]:
    """Names a subgraph reads, including from the graphs that enclose it."""
    names = {name for node in graph.node for name in node.input}
    for node in graph.node:
        for body in _subgraphs(node):
            names |= _graph_reads(body)
    return names


__all__ = ["TransposedWeight", "fold_weight_transposes", "read_weight"]
