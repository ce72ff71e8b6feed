"""Run the decoder service: `python -m services.decoder`."""

from libs.runtime.entrypoint import main
from libs.settings import DecoderSettings
from services.decoder.bootstrap import bootstrap

if __name__ == "__main__":
    main("decoder", DecoderSettings, bootstrap)
