"""Reliability issue, classes 6 and 7: everything public pickles, bad arguments get clear
errors naming the function and the argument, and a failed call changes nothing."""
import numpy as np
import pytest

import normfast as nf
import normfast.nn as nfnn

def test_layers_pickle_and_deepcopy():
    import copy
    import pickle
    rng = np.random.default_rng(0)
    bn = nfnn.BatchNorm(3)
    x = rng.normal(size=(4, 3, 5)).astype(np.float32)
    bn(x)                                               # running statistics move
    for clone in (pickle.loads(pickle.dumps(bn)), copy.deepcopy(bn)):
        np.testing.assert_array_equal(clone.running_mean, bn.running_mean)
        clone.eval(), bn.eval()
        np.testing.assert_array_equal(clone(x), bn(x))
        bn.train()


def test_public_functions_pickle_by_reference():
    import pickle
    for name in nf.__all__:
        obj = getattr(nf, name)
        if callable(obj):
            assert pickle.loads(pickle.dumps(obj)) is obj, name


def test_group_norm_bad_groups_and_atomic_load():
    with pytest.raises(ValueError, match="num_groups"):
        nfnn.GroupNorm(0, 4)
    bn = nfnn.BatchNorm(3)
    good = {k: np.full(3, 2.0) for k in ("weight", "bias", "running_mean", "running_var")}
    good["num_batches_tracked"] = np.array(5)
    bad = dict(good, running_var=np.ones(4))
    with pytest.raises(ValueError, match="running_var"):
        bn.load_state_dict(bad)
    np.testing.assert_array_equal(bn.weight, np.ones(3))     # nothing was loaded
    bn.load_state_dict(good)
    np.testing.assert_array_equal(bn.weight, np.full(3, 2.0))


@pytest.mark.parametrize("call, exc, words", [
    (lambda: nf.layer_norm(np.float32(3), 1), ValueError, ("layer_norm", "normalized_shape")),
    (lambda: nf.batch_norm(np.float32(1), None, None, training=True), ValueError, ("batch_norm", "dimensions")),
    (lambda: nf.layer_norm(np.ones((2, 3)), (i for i in [4])), ValueError, ("layer_norm", "normalized_shape")),
    (lambda: nf.layer_norm(np.ones((2, 3)), 3, eps="x"), TypeError, ("layer_norm", "eps")),
    (lambda: nf.group_norm(np.ones((2, 4, 3)), 3), ValueError, ("group_norm", "num_groups")),
    (lambda: nf.moments(np.ones(3), correction=-1), ValueError, ("moments", "correction")),
    (lambda: nf.layer_norm(np.ones((2, 3)), 3, np.ones(4)), ValueError, ("layer_norm", "weight")),
    (lambda: nf.batch_norm(np.ones((2, 3)), np.zeros(3), np.ones(3), training=False, out=np.ones((2, 2))),
     ValueError, ("batch_norm", "out")),
])
def test_errors_name_function_and_argument(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value)


def test_generator_normalized_shape_is_read_once():
    x = np.random.default_rng(0).normal(size=(2, 3))
    np.testing.assert_array_equal(nf.layer_norm(x, (i for i in [3])), nf.layer_norm(x, (3,)))
