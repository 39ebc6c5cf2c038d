import sys

from toolkit.compress.cli import main

sys.exit(main())
