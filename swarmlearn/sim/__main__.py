import sys

from swarmlearn.sim.cli import main

sys.exit(main())
