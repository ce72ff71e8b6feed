"""Run the decoder service: `python -m services.decoder`."""

import os

from libs.runtime.entrypoint import main
from libs.settings import DecoderSettings
from services.decoder.bootstrap import bootstrap

if __name__ == "__main__":
    # Torch is imported later, with the model: its OpenMP workers then sleep between calls
    # instead of spinning, which on cores shared with the pipeline's processes burned about
    # a third of the decoder's CPU (make bench-throughput: 202 -> 146 ms per job).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main("decoder", DecoderSettings, bootstrap)
