"""`python -m services.vetting [--node-local] [--profile llm]`: vet this node (the prolog's `vetnode` part)."""

import sys

from services.vetting.vet import main

sys.exit(main())
