"""`python -m services.broker` = `drivelab serve broker`."""

import sys

from services.broker import service

sys.exit(service.main())
