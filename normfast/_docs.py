"""Docstring fragments the operators share (numpydoc), written once and filled in by ``fill``:
a ``{name}`` placeholder on a line of its own is replaced by FRAGMENTS[name], indented as the
placeholder."""

FRAGMENTS = {
    "grad_out_x": """grad_out : array like x
    Gradient of the loss with respect to the forward's output.
x : array
    The forward's input.""",
    "weight_bwd": """weight : array, optional
    The forward's weight (None: no weight; grad_weight and grad_bias are then None).""",
    "needs_out": """needs_input_grad : tuple of bool, default all True
    Gradients not requested are returned as None and not computed.
out : array like x, optional
    Where to write grad_x; may be grad_out or x itself (in place).""",
    "raises_bwd": """TypeError, ValueError
    Non-floating arrays, shapes that do not match x, statistics of the wrong size, a bad ``out``.""",
}


def fill(fn):
    """Decorator: replace the ``{name}`` placeholders of fn's docstring by their fragments."""
    doc = fn.__doc__
    for name, text in FRAGMENTS.items():
        key = "{" + name + "}"
        while key in doc:
            i = doc.index(key)
            indent = doc[doc.rfind("\n", 0, i) + 1:i]
            doc = doc[:i] + text.replace("\n", "\n" + indent) + doc[i + len(key):]
    fn.__doc__ = doc
    return fn
