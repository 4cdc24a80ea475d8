import sys

from crucible.worker.main import main

sys.exit(main())
