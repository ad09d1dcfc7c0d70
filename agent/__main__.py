"""`python -m agent` (on a build host, with --dry-run) and the body of the image's /init."""

import sys

from agent.init import main

if __name__ == "__main__":
    sys.exit(main())
