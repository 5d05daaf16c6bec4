"""`remove_dead_nodes`: the nodes, initializers and value infos the other passes left unread."""

from __future__ import annotations

import onnx

from cnnserve.contracts.onnx_graph import graph_outputs


def remove_dead_nodes(model: onnx.ModelProto) -> int:
    """Drops nodes whose outputs nobody reads, then initializers nobody reads."""
    removed = 0
    while True:
        needed = graph_outputs(model) | {name for node in model.graph.node for name in node.input}
        live = [node for node in model.graph.node if any(out in needed for out in node.output)]
        if len(live) == len(model.graph.node):
            break
        removed += len(model.graph.node) - len(live)
        del model.graph.node[:]
        model.graph.node.extend(live)
    needed = {name for node in model.graph.node for name in node.input}
    initializers = [init for init in model.graph.initializer if init.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(initializers)
    names = {out for node in model.graph.node for out in node.output}
    infos = [info for info in model.graph.value_info if info.name in names]
    del model.graph.value_info[:]
    model.graph.value_info.extend(infos)
    return removed
