import sys

from forgeline.cli.app import main

sys.exit(main())
