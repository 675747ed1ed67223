"""``python -m train`` entry point (``torchrun -m train`` runs the same under DDP)."""

import sys

from train.cli import main

if __name__ == "__main__":
    sys.exit(main())
