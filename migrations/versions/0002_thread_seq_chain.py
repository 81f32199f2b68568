"""thread position and chained hash on messages; index of system messages

Revision ID: 0002
Revises: 0001
"""
import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("chain", sa.String(length=64), nullable=True))
    op.create_index("ix_messages_system", "messages", ["session_id", "model", "id"],
                    sqlite_where=sa.text("role = 'system'"),
                    postgresql_where=sa.text("role = 'system'"))
    # Number and chain the ok messages already stored, thread by thread.
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT id, session_id, model, role, content FROM messages WHERE status = 'ok' "
        "ORDER BY session_id, model, id")).fetchall()
    thread, seq, chain = None, 0, ""
    for row in rows:
        if (row.session_id, row.model) != thread:
            thread, seq, chain = (row.session_id, row.model), 0, ""
        seq += 1
        chain = hashlib.sha256(f"{chain}\0{row.role}\0{row.content}".encode()).hexdigest()
        conn.execute(sa.text("UPDATE messages SET seq = :seq, chain = :chain WHERE id = :id"),
                     {"seq": seq, "chain": chain, "id": row.id})


def downgrade():
    op.drop_index("ix_messages_system", table_name="messages")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("chain")
        batch_op.drop_column("seq")
