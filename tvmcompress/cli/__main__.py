import sys

from tvmcompress.cli import main

sys.exit(main())
