"""darkroom's services, one package each; they talk to each other only through Kafka."""
