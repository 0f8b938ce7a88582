"""`python -m services.vetting [--node-local] [--profile llm]`: vet this node (the prolog's `vetnode` part)."""

from services.vetting.vet import exit_now, main

exit_now(main())
