"""`python -m flowscale_ray ...` is the `flowscale` command."""

import sys

from flowscale_ray.cli import main

if __name__ == "__main__":
    sys.exit(main())
