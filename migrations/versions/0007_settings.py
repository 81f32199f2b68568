"""Settings kept in the database: keys_on, once API keys have been on

The last key removed then locks the server instead of opening it (chatbot.store.keys).

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "settings",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # A database made before this revision with keys in it had keys on.
    op.execute("INSERT INTO settings (name, value, updated_at) "
               "SELECT 'keys_on', 'true', CURRENT_TIMESTAMP WHERE EXISTS (SELECT 1 FROM api_keys)")


def downgrade():
    op.drop_table("settings")
