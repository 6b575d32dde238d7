"""Docs that run (structure issue, item 8): every public function and class of ``normfast`` has a
numpydoc docstring (Parameters or Returns, and Examples) whose examples pass as doctests."""
import doctest
import inspect

import pytest

import normfast as nf

PUBLIC = sorted(nf.__all__)


def _target(name):
    obj = getattr(nf, name)
    while hasattr(obj, "__wrapped__"):
        obj = obj.__wrapped__
    return obj


@pytest.mark.parametrize("name", PUBLIC)
def test_numpydoc_sections(name):
    doc = inspect.getdoc(getattr(nf, name)) or ""
    assert ("Parameters\n----------" in doc or "Returns\n-------" in doc), name
    assert "Examples\n--------" in doc, name


@pytest.mark.parametrize("name", PUBLIC)
def test_examples_run(name):
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(_target(name), name, globs={})
    assert tests and tests[0].examples, name
    for t in tests:
        runner.run(t)
    assert runner.failures == 0, f"{name}: {runner.failures} failing example(s)"
