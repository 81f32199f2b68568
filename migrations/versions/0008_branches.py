"""threads as trees: each message's place on its path (pos) and its parent's chained hash
(prev_chain); the active path keeps seq, a branch off it keeps pos with seq NULL

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("pos", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("prev_chain", sa.String(length=64), nullable=True))
    # Today's threads are each one path: nothing any of them shows changes.
    op.execute("UPDATE messages SET pos = seq WHERE seq IS NOT NULL")
    op.execute("UPDATE messages SET prev_chain = '' WHERE seq = 1")
    op.execute("UPDATE messages SET prev_chain = (SELECT p.chain FROM messages p "
               "WHERE p.session_id = messages.session_id AND p.model = messages.model "
               "AND p.seq = messages.seq - 1) WHERE seq > 1")
    op.create_index("ix_messages_children", "messages", ["session_id", "model", "prev_chain"])


def downgrade():
    op.drop_index("ix_messages_children", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("prev_chain")
        batch.drop_column("pos")
