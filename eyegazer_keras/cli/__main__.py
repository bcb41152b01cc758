"""``python -m eyegazer_keras.cli``: the `eyegazer` command."""

import sys

from eyegazer_keras.cli import main

sys.exit(main())
