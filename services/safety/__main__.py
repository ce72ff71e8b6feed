"""Run the safety service: `python -m services.safety`."""

from libs.runtime.entrypoint import main
from libs.settings import SafetySettings
from services.safety.bootstrap import bootstrap

if __name__ == "__main__":
    main("safety", SafetySettings, bootstrap)
