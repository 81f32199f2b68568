"""one turn at a time per thread, one copy of a request's rows

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("part", sa.Integer(), nullable=True))
    conn = op.get_bind()
    # Number the rows already stored within their request, in the order they were written.
    rows = conn.execute(sa.text(
        "SELECT id, request_id FROM messages WHERE request_id IS NOT NULL "
        "ORDER BY request_id, id")).fetchall()
    request, part = None, 0
    for row in rows:
        part = part + 1 if row.request_id == request else 0
        request = row.request_id
        conn.execute(sa.text("UPDATE messages SET part = :part WHERE id = :id"),
                     {"part": part, "id": row.id})
    # A thread forked by two concurrent turns keeps its first row at each position; the later
    # ones leave the replayed thread (kept, not deleted).
    dupes = conn.execute(sa.text(
        "SELECT m.id FROM messages m WHERE m.seq IS NOT NULL AND EXISTS (SELECT 1 FROM messages o "
        "WHERE o.session_id = m.session_id AND o.model = m.model AND o.seq = m.seq "
        "AND o.id < m.id)")).fetchall()
    for row in dupes:
        conn.execute(sa.text("UPDATE messages SET seq = NULL, chain = NULL WHERE id = :id"),
                     {"id": row.id})
    op.create_index("ux_messages_thread_seq", "messages", ["session_id", "model", "seq"],
                    unique=True, sqlite_where=sa.text("seq IS NOT NULL"),
                    postgresql_where=sa.text("seq IS NOT NULL"))
    op.create_index("ux_messages_request_part", "messages", ["request_id", "part"], unique=True)


def downgrade():
    op.drop_index("ux_messages_request_part", table_name="messages")
    op.drop_index("ux_messages_thread_seq", table_name="messages")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("part")
