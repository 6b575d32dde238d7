"""Docs that run (structure issue, item 8): every public function and class of ``normfast`` and of
its submodules ``normfast.nn``, ``normfast.dask``, ``normfast.torch`` and ``normfast.sklearn`` has a
numpydoc docstring (Parameters or Returns, and Examples) whose examples pass as doctests, and so
do the public methods normfast defines on those classes (Parameters or Returns; their examples,
where they have some, run too).  A submodule whose optional dependency is not installed is
skipped."""
import doctest
import importlib
import importlib.util
import inspect

import pytest

#: The documented modules and the optional package each needs (None: none).
MODULES = {"normfast": None, "normfast.nn": None, "normfast.dask": "dask", "normfast.torch": "torch",
           "normfast.sklearn": "sklearn"}


def _unwrap(obj):
    while hasattr(obj, "__wrapped__"):
        obj = obj.__wrapped__
    return obj


def _public_names(mod):
    """``__all__``, or the names the module defines itself; functions and classes only."""
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [n for n, v in vars(mod).items()
                 if not n.startswith("_") and getattr(v, "__module__", None) == mod.__name__]
    return sorted(n for n in names if inspect.isclass(getattr(mod, n)) or inspect.isfunction(_unwrap(getattr(mod, n))))


def _methods(cls):
    """{name: method} of the public methods (and ``__call__``) that normfast's own classes in cls's
    MRO define (those of torch or scikit-learn are theirs to document)."""
    found = {}
    for klass in cls.__mro__:
        if not klass.__module__.startswith("normfast"):
            continue
        for name, value in vars(klass).items():
            if (name.startswith("_") and name != "__call__") or name in found:
                continue
            if inspect.isfunction(value) or isinstance(value, (classmethod, staticmethod)):
                found[name] = getattr(cls, name)
    return found


def _items():
    """(label, object, is_method) for every documented object; a skipped param per module whose
    dependency is missing."""
    items = []
    for modname, dep in MODULES.items():
        if dep is not None and importlib.util.find_spec(dep) is None:
            items.append(pytest.param(modname, None, False, marks=pytest.mark.skip(reason=f"{modname} needs {dep}")))
            continue
        mod = importlib.import_module(modname)
        for name in _public_names(mod):
            obj = getattr(mod, name)
            items.append(pytest.param(f"{modname}.{name}", obj, False, id=f"{modname}.{name}"))
            if inspect.isclass(obj):
                for mname, meth in sorted(_methods(obj).items()):
                    label = f"{modname}.{name}.{mname}"
                    items.append(pytest.param(label, meth, True, id=label))
    return items


ITEMS = _items()


def _doc(obj):
    return inspect.getdoc(obj) or ""


@pytest.mark.parametrize("label, obj, is_method", ITEMS)
def test_numpydoc_sections(label, obj, is_method):
    doc = _doc(obj)
    assert "Parameters\n----------" in doc or "Returns\n-------" in doc, label
    if inspect.isclass(obj):
        assert vars(obj).get("__doc__"), f"{label}: the class has no docstring of its own"
    if not is_method:
        assert "Examples\n--------" in doc, label
    for line in doc.splitlines():                     # every fragment placeholder was filled in
        s = line.strip()
        assert not (s.startswith("{") and s.endswith("}") and s[1:-1].isidentifier()), f"{label}: {s}"


@pytest.mark.parametrize("label, obj, is_method", ITEMS)
def test_examples_run(label, obj, is_method):
    test = doctest.DocTestParser().get_doctest(_doc(obj), {}, label, None, 0)
    if not is_method:
        assert test.examples, label
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0, f"{label}: {runner.failures} failing example(s)"


def test_every_module_documented():
    """The lists above are not empty (a renamed ``__all__`` would silently test nothing)."""
    labels = [p.values[0] for p in ITEMS]
    for modname, dep in MODULES.items():
        if dep is None or importlib.util.find_spec(dep) is not None:
            assert any(lab.startswith(modname + ".") for lab in labels), modname
