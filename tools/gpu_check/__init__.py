"""The GPU acceptance run in one command (``make gpu-check``): the build, the CUDA tests, compute-sanitizer, kernel
times, the benchmarks and the tables, each step recorded in one result file as soon as it ends.

    make gpu-check                                   # .venv's python where there is one, else python3
    python3 -m tools.gpu_check                       # the same, from the repository root; no install needed
    python3 -m tools.gpu_check --steps environment,build,tests --copy-results /tmp/out

The steps, in this order, each with a time limit inside one budget (``--budget``, 420 s: with the interpreter's
start and the copies, the run fits the 8 minutes of a lent H100 or H200; docs/operator.md):

1. ``environment``: torch, CUDA, the GPU and its compute capability, compute-sanitizer, nvcc, ninja (on PATH or
   beside the interpreter), whether open_clip and pytest-xdist are installed. TORCH_CUDA_ARCH_LIST is set to one
   architecture that runs on this GPU for every later step (``--arch-list`` chooses others): a preset list's entry
   for it (``9.0a``), else its compute capability.
2. ``build``: ``sportsnet._C`` against the installed torch, once: kept where it imports; compiled in place by
   setup.py where this interpreter has none; then loaded under SPORTSNET_REQUIRE_EXT=1 and run once on each
   device against the reference. When it fails, the steps that need it (tests, sanitizer, profile, benchmarks)
   are skipped with its reason instead of each retrying the build.
3. ``tests``: the CUDA tests of tests/ops (``-k cuda``) under SPORTSNET_REQUIRE_EXT=1, in pytest-xdist workers
   where it is installed; without CUDA they skip.
4. ``sanitizer``, beside the tests: the workload (:mod:`.workloads`) once as it is, checked against the reference,
   then under compute-sanitizer's memcheck, racecheck and synccheck (our kernels only) and initcheck (every
   kernel), side by side, each report capped. PyTorch's caching allocator is off there, so each tensor is its own
   allocation. An error in our kernels (``sportsnet`` in the name), or one the print limit left out, fails the
   step; errors in PyTorch's kernels and CUDA API calls that returned an error are reported. Without CUDA, the
   workload runs on the CPU.
5. ``profile``: torch.profiler's kernel times of the op and the eager reference at VGG19's conv5 (K = 512, 7x7
   and 14x14 -> 224x224), B = 1 and 256, float32; without CUDA, the CPU op at B = 1 and 8.
6. ``benchmarks``: bench_gradcam, bench_explain, bench_train and bench_data with ``--device cuda``, trimmed to
   fit (:data:`.steps.BENCHMARKS`); skipped without CUDA.
7. ``tables``: ``python -m benchmarks.tables --update`` after the benchmarks (``--check`` when they did not run),
   and which result files of this run no page shows yet.

Each step ends ``ran`` (nothing to pass or fail), ``passed``, ``failed`` or ``skipped`` (with the reason), with
its duration and key numbers, in ``benchmarks/results/gpu_check_<device>.json`` (and ``--copy-results``), written
after every step: a run stopped from outside keeps what finished. Every program's output is kept in
``--log-dir``. The exit status is 1 when a step failed (a skip is not a failure).

Modules, by job: :mod:`.programs` runs programs, :mod:`.parsing` reads what pytest and compute-sanitizer print,
:mod:`.workloads` holds the GPU workloads, :mod:`.steps` the steps, :mod:`.runner` their order and time limits,
:mod:`.report` the result file and its table, :mod:`.cli` the command line.
"""
