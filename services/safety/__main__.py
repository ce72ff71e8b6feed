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
    # And one intra-op thread: a check scores a few 64x64 pictures, where a second thread
    # costs more in hand-offs than it saves (1.9 instead of 3.1 ms of CPU per picture on a
    # 2-core machine); checks that come together are scored in one call instead
    # (services.safety.content).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main("safety", SafetySettings, bootstrap)
