"""`python -m services.scene_loader` = `drivelab serve scene_loader`."""

import sys

from services.scene_loader import service

sys.exit(service.main())
