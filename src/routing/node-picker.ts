import type { OllamaNode } from "../upstream/ollama-node.js";
import type { NodeHealth } from "../upstream/node-health.js";

/** Chooses the node for a request. */
export interface NodePicker {
  /** A node to try: healthy ones first, in turn. */
  pick(): OllamaNode;
}

/**
 * Round-robin over healthy nodes. When none is healthy it still returns one
 * (in turn), so a node that just came back is found by real traffic, which
 * fails fast with UNAVAILABLE when it is still down.
 */
export function createNodePicker(nodes: readonly OllamaNode[], health: NodeHealth): NodePicker {
  if (nodes.length === 0) throw new Error("no Ollama nodes configured");
  let next = 0;
  return {
    pick() {
      for (let i = 0; i < nodes.length; i++) {
        const node = nodes[(next + i) % nodes.length]!;
        if (health.isHealthy(node.name)) {
          next = (next + i + 1) % nodes.length;
          return node;
        }
      }
      const node = nodes[next % nodes.length]!;
      next = (next + 1) % nodes.length;
      return node;
    },
  };
}
