from tests.integration.conftest import db_url, serve, work  # noqa: F401
