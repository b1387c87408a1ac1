"""Where a parsed JSON value nests deepest, without recursion (it may be 1000 levels deep)."""

from __future__ import annotations

from typing import Any

Path = tuple[str | int, ...]


def deepest(value: Any) -> tuple[int, Path]:
    """The nesting depth of `value` (a scalar is 0, `[]` and `{}` are 1) and the path of keys
    and indexes to its first deepest container. Linear in the size of `value`."""
    # Each container seen: (index of its parent here, its key there); the path is rebuilt
    # once at the end, so that a wide and deep value costs no path copy per node.
    seen: list[tuple[int, str | int]] = []
    best_depth, best = 0, -1
    stack: list[tuple[Any, int, int, str | int]] = [(value, 1, -1, "")]
    while stack:
        node, depth, parent, key = stack.pop()
        if isinstance(node, dict):
            children: list[tuple[str | int, Any]] = list(node.items())
        elif isinstance(node, list):
            children = list(enumerate(node))
        else:
            continue
        seen.append((parent, key))
        here = len(seen) - 1
        if depth > best_depth:
            best_depth, best = depth, here
        # Reversed, so that the first of equally deep containers is met first.
        stack.extend((child, depth + 1, here, k) for k, child in reversed(children))
    path: list[str | int] = []
    while best > 0:
        best, key = seen[best]
        path.append(key)
    return best_depth, tuple(reversed(path))
