import sys

from tricklab.cli.main import main

sys.exit(main())
