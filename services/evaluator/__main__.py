"""`python -m services.evaluator` = `drivelab serve evaluator`."""

import sys

from services.evaluator import service

sys.exit(service.main())
