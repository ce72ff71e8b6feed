"""Settings: environment variables, safe defaults, refusal of development secrets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from libs.settings import DEV_OPERATOR_TOKEN, DecoderSettings, GatewaySettings, StorageSettings


def test_defaults_are_local(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DARKROOM_ENV", "DARKROOM_KAFKA_BOOTSTRAP", "DARKROOM_GATEWAY_PORT"):
        monkeypatch.delenv(var, raising=False)
    settings = GatewaySettings()
    assert settings.env == "development"
    assert settings.kafka_bootstrap.startswith("127.0.0.1:")


def test_values_come_from_darkroom_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKROOM_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("DARKROOM_GATEWAY_PORT", "9999")
    settings = GatewaySettings()
    assert (settings.kafka_bootstrap, settings.gateway_port) == ("kafka:9092", 9999)


def test_production_refuses_development_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKROOM_ENV", "production")
    monkeypatch.delenv("DARKROOM_MINIO_SECRET_KEY", raising=False)
    with pytest.raises(ValidationError, match="DARKROOM_MINIO_SECRET_KEY"):
        StorageSettings()
    monkeypatch.delenv("DARKROOM_SIGNING_KEY", raising=False)
    with pytest.raises(ValidationError, match="DARKROOM_SIGNING_KEY"):
        GatewaySettings()


def test_production_refuses_the_development_operator_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKROOM_ENV", "production")
    monkeypatch.setenv("DARKROOM_MINIO_SECRET_KEY", "a-real-secret-from-a-vault")
    monkeypatch.setenv("DARKROOM_SIGNING_KEY", "a-real-signing-key")
    for token in (DEV_OPERATOR_TOKEN, ""):
        monkeypatch.setenv("DARKROOM_OPERATOR_TOKEN", token)
        with pytest.raises(ValidationError, match="DARKROOM_OPERATOR_TOKEN"):
            GatewaySettings()
    monkeypatch.setenv("DARKROOM_OPERATOR_TOKEN", "a-real-operator-token")
    assert GatewaySettings().operator_token == "a-real-operator-token"


def test_production_starts_with_real_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKROOM_ENV", "production")
    monkeypatch.setenv("DARKROOM_MINIO_SECRET_KEY", "a-real-secret-from-a-vault")
    assert StorageSettings().env == "production"


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKROOM_GATEWAY_PORT", "not-a-port")
    with pytest.raises(ValidationError, match="gateway_port"):
        GatewaySettings()


def test_a_decoder_caps_mixed_batches_on_cpu_and_not_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DARKROOM_BATCH_IMAGES", "DARKROOM_MIXED_BATCH_IMAGES"):
        monkeypatch.delenv(var, raising=False)
    settings = DecoderSettings()
    assert (settings.batch_limit("cpu"), settings.mixed_limit("cpu")) == (8, 1)
    assert (settings.batch_limit("cuda:0"), settings.mixed_limit("cuda:0")) == (64, None)
    monkeypatch.setenv("DARKROOM_MIXED_BATCH_IMAGES", "4")
    assert DecoderSettings().mixed_limit("cuda") == 4
