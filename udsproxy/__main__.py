import sys

from udsproxy.cli import main

sys.exit(main())
