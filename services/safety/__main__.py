"""Run the safety service: `python -m services.safety`."""

import os

from libs.runtime.entrypoint import main
from libs.settings import SafetySettings
from services.safety.bootstrap import bootstrap

if __name__ == "__main__":
    # Torch is imported later, with the model: its OpenMP workers then sleep between calls
    # instead of spinning, which on cores shared with the pipeline's processes burned about
    # a third of the decoder's CPU (make bench-throughput: 202 -> 146 ms per job).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main("safety", SafetySettings, bootstrap)
