"""The guarded gateway (FastAPI). Build it with ``bastion.serve.app.create_app(settings)``,
settings from ``bastion.serve.settings.load_settings(config, **flags)``."""
