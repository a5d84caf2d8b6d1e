"""tinycnn against PyTorch, side by side in one process: `python -m benchmarks.run --help`.

twins.py holds the PyTorch twins of the registry networks; run.py the timings; RESULTS.md the
measured figures and what they say about the targets of the "Kernels and speed" issue.
"""
