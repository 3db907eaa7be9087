import sys

from .cli import main
from .machine import pick_threads

pick_threads()  # torch's threads: the cores this process may use (affinity, container quota)
sys.exit(main())
