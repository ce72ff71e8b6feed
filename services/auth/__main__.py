"""Run the auth service: `python -m services.auth`."""

from libs.runtime.entrypoint import main
from libs.settings import AuthSettings
from services.auth.bootstrap import bootstrap

if __name__ == "__main__":
    main("auth", AuthSettings, bootstrap)
