"""``python -m tools.gpu_check``: the GPU acceptance run (see the package's docstring, or ``--help``)."""
from .cli import main

raise SystemExit(main())
