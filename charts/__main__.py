"""`python -m charts`: the engine's command line with `report` added (charts.cli)."""
import sys

from charts.cli import main
from engine.hardware.machine import pick_threads

pick_threads()  # torch's threads: the cores this process may use, as `python -m engine` does
sys.exit(main())
