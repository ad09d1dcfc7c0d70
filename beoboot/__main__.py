import sys

from beoboot.cli import main

sys.exit(main())
