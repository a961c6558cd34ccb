"""The web front-end: Flask app factory and blueprints. Never imports provider code."""
