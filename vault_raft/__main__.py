import sys

from vault_raft.cli.main import main

sys.exit(main())
