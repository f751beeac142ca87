import sys

from swarmlearn.cli import main

sys.exit(main())
