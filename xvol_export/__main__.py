"""``python -m xvol_export`` runs the ``xvol`` command line.

The one module of the package that imports the CLI: it is the program, not the library. Signals are handled
from its first line, before the commands import torch and ONNX (the package's top level imports neither).
"""

from xvol_cli import interrupts

interrupts.early()

from xvol_cli.main import main  # noqa: E402 - after the signal handlers, on purpose

if __name__ == "__main__":
    main()
