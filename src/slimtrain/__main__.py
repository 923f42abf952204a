"""``python -m slimtrain`` runs the ``slimtrain`` command."""
import sys

from .cli import main

sys.exit(main())
