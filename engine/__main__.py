import sys

from engine.cli import main
from engine.hardware.machine import pick_threads

pick_threads()  # torch's threads: the cores this process may use (affinity, container quota)
sys.exit(main())
