import sys

from carbonmeter.cli import main

sys.exit(main())
