"""Alembic environment: runs against the connection Tallyray hands over."""

from alembic import context

from tallyray.storage.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` run by hand: use the URL from the config or environment
    from tallyray.storage.db import make_engine

    connection = make_engine(context.config.get_main_option("sqlalchemy.url")).connect()

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
