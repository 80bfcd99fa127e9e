"""Find the node(s) that make a batched resolve unsatisfiable, with dry-run resolves.

When the one batched install fails, installing node by node gives up the single
consistent resolve for everyone. Instead: find the smallest prefix of the nodes
that no longer resolves (a binary search over prefixes: log2(n) dry runs); its
last node conflicts with the ones before it (or cannot be resolved at all), so
it is a culprit. Drop it and repeat until the rest resolves, then install the
rest together. Resolvability only shrinks as requirements are added, which is
what makes the prefix search sound.
"""

from typing import Callable, Dict, List, Sequence, Tuple

#: ``resolve(nodes) -> (ok, resolver message)``: a dry run of those nodes together.
Resolve = Callable[[Sequence[int]], Tuple[bool, str]]


def find_culprits(nodes: Sequence[int], resolve: Resolve) -> Dict[int, str]:
    """The culprit nodes, each with the resolver's message that condemned it."""
    remaining: List[int] = list(nodes)
    culprits: Dict[int, str] = {}
    while remaining:
        ok, message = resolve(remaining)
        if ok:
            break
        low, high = 1, len(remaining)  # remaining[:high] fails
        while low < high:
            middle = (low + high) // 2
            ok, text = resolve(remaining[:middle])
            if ok:
                low = middle + 1
            else:
                high = middle
                message = text
        culprit = remaining.pop(high - 1)
        culprits[culprit] = message
    return culprits
