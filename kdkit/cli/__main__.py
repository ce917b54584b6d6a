"""``python -m kdkit.cli ...``: the ``kdkit`` command."""
import sys

from kdkit.cli.main import main

sys.exit(main())
