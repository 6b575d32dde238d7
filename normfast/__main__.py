"""Command-line entry: ``python -m normfast <command> [options]``.

Commands
  bench          benchmark normfast against NumPy / PyTorch / CuPy (normfast.bench)
  check-kernels  compile and check the GPU kernels (normfast._gpu.compile)
  gpu-check      device tests and a GPU benchmark on a CUDA machine (normfast._gpu.check)
  dask-demo      distributed statistics demo with dask (normfast._dask_demo)
"""
import importlib
import os
import sys

COMMANDS = {
    "bench": ("normfast.bench", "benchmark normfast against NumPy, PyTorch and CuPy, with the copy roofline"),
    "check-kernels": ("normfast._gpu.compile", "compile every CUDA kernel with NVRTC (needs CuPy, no GPU)"),
    "gpu-check": ("normfast._gpu.check", "run the GPU tests and a GPU benchmark on a CUDA device (PASS/FAIL)"),
    "dask-demo": ("normfast._dask_demo", "mergeable statistics over a dask array (needs dask)"),
}


def usage(file=sys.stdout):
    print("usage: python -m normfast <command> [options]\n\ncommands:", file=file)
    for name, (_, text) in COMMANDS.items():
        print(f"  {name:<14} {text}", file=file)
    print("\n'python -m normfast <command> --help' describes a command's options.", file=file)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        usage()
        return 0
    if argv[0] in ("-V", "--version"):
        import normfast
        print(f"normfast {normfast.__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"normfast: unknown command {cmd!r}", file=sys.stderr)
        usage(sys.stderr)
        return 2
    module_name = COMMANDS[cmd][0]
    try:
        module = importlib.import_module(module_name)   # lazily: optional parts may be missing
    except ImportError as e:
        missing = getattr(e, "name", None)
        if missing == module_name:
            why = f"{module_name} is not part of this installation"
        else:
            why = f"importing {module_name} failed: {type(e).__name__}: {e}"
        print(f"normfast: the {cmd!r} command is unavailable ({why}).", file=sys.stderr)
        return 2
    entry = getattr(module, "main", None)
    if entry is None:
        print(f"normfast: the {cmd!r} command is unavailable ({module_name} has no main()).", file=sys.stderr)
        return 2
    try:
        rc = entry(rest)
    except BrokenPipeError:                     # e.g. `python -m normfast bench | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 1
    except KeyboardInterrupt:
        print("normfast: interrupted", file=sys.stderr)
        return 130
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
