"""Training for the EE-559 course models: data, model definitions, the registry and the CLI."""
