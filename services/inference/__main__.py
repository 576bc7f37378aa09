"""`python -m services.inference` = `drivelab serve inference`."""

import sys

from services.inference import service

sys.exit(service.main())
