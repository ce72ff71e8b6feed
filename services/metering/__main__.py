"""Run the metering service: `python -m services.metering`."""

from libs.runtime.entrypoint import main
from libs.settings import MeteringSettings
from services.metering.bootstrap import bootstrap

if __name__ == "__main__":
    main("metering", MeteringSettings, bootstrap)
