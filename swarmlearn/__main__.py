import sys

from swarmlearn.cli.main import main

sys.exit(main())
