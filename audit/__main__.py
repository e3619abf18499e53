"""`python -m audit`: see `audit.runner`."""
import sys

from audit.runner import main

sys.exit(main())
