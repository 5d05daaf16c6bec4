import sys

from cnnserve.cli import main

sys.exit(main())
