"""`python -m services.learner` = `drivelab serve learner`."""

import sys

from services.learner import service

sys.exit(service.main())
