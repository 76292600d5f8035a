import sys

from jface.reconstruct import main

sys.exit(main())
