"""The BentoML service: HTTP routes over the exported models (see service.py). Imports only core/."""
