"""normfast.bench: side-by-side benchmark of normfast against NumPy, PyTorch and CuPy.

Run it as ``python -m normfast bench [options]`` (``--help`` lists them).

For every case (operator x shape x memory layout) the harness times, interleaved
round by round so that machine noise hits every backend alike:

* ``normfast``  the library (outputs pre-allocated with ``out=`` where the API allows);
* ``numpy``     a plain NumPy implementation written the obvious way (this file);
* ``torch``     ``torch.nn.functional`` on CPU tensors sharing the NumPy buffers;
* ``cupy``      the plain implementation run with CuPy (only with a CUDA device);
* ``copy``      ``np.copyto(dst, src)`` moving the same number of bytes as the op:
                the memory-bandwidth roofline measured in the same run.

Each backend is warmed up, calibrated (calls are batched so one sample lasts >= 2 ms,
which matters only for the small-call cases) and then sampled ``min_reps..max_reps``
times with ``time.perf_counter``; the reported time is the MEDIAN per call.

Bytes moved (the GB/s numerator): forward = read x + write y (2 * numel * itemsize);
backward = read x, grad_out + write grad_x (3 * numel * itemsize); moments = read x;
add-norm = read x, residual + write y, h (4 * numel * itemsize).  Weights, biases
and statistics are ignored (they are tiny).  The copy row moves the same bytes
(a copy of S bytes counts 2 * S: read + write).

Accuracy: every backend's outputs are compared with the same plain NumPy code run in
float64 on the same (float32-rounded) inputs -- for moments (float64 input) reduced along a
contiguous axis, where NumPy's pairwise summation keeps the reference error ~1e-16 -- and
the max abs error is printed next to the speed.

Package layout: _references (plain NumPy/CuPy implementations), _env (environment report),
_cases (one builder per operator family, the default suite), _timing (interleaved timing,
copy roofline, accuracy), _report (table, plot), _main (command line).  The server and
pipeline scenarios are normfast.bench.server and normfast.bench.pipeline.
"""
from ._cases import (ALL_OPS, SMALL_CALL_BYTES, SUITE, Case, Peer, _rand, build_case,  # noqa: F401
                     plan_cases)
from ._env import Env, format_header, header_info  # noqa: F401
from ._main import SCENARIOS, main, make_parser, parse_shapes  # noqa: F401
from ._references import EPS, GROUPS, RMS_EPS, ref_layer_norm, ref_moments, ref_rms_norm  # noqa: F401
from ._report import FOOTNOTES, _fmt_err, format_table, write_plot  # noqa: F401
from ._timing import _exc, _max_err, measure, run_case  # noqa: F401
