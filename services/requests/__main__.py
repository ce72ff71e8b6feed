"""Run the requests service: `python -m services.requests`."""

from libs.runtime.entrypoint import main
from libs.settings import RequestsSettings
from services.requests.bootstrap import bootstrap

if __name__ == "__main__":
    main("requests", RequestsSettings, bootstrap)
