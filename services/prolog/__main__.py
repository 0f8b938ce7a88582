"""`python -m services.prolog run prolog|epilog` (Slurm, through our wrappers) or `install --root R` (the role)."""

import sys

if sys.argv[1:2] == ["install"]:
    from services.prolog.install import main as install_main

    sys.exit(install_main(sys.argv[2:]))

from services.prolog.runner import main

sys.exit(main())
