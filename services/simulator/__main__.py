"""`python -m services.simulator` = `drivelab serve simulator`."""

import sys

from services.simulator import service

sys.exit(service.main())
