"""Run the storage service: `python -m services.storage`."""

from libs.runtime.entrypoint import main
from libs.settings import StorageSettings
from services.storage.bootstrap import bootstrap

if __name__ == "__main__":
    main("storage", StorageSettings, bootstrap)
