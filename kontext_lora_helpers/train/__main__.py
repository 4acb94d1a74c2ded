"""``python -m kontext_lora_helpers.train``: see `kontext_lora_helpers.train`."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
