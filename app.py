"""The esd-lora web app: ``python app.py [--host H] [--port P] [--share]`` (also how a Hugging Face Space runs it).

Everything lives in :mod:`esd_lora.app`; this file only launches it.
"""

import sys

from esd_lora.app import main

if __name__ == "__main__":
    sys.exit(main())
