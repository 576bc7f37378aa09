"""`python -m services.replay` = `drivelab serve replay`."""

import sys

from services.replay import service

sys.exit(service.main())
