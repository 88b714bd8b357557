"""subscriptions outlive their mailbox: a subscriptions table replaces mailboxes.subscribed

RFC 3501 §6.3.6 keeps a subscribed name after its mailbox is deleted, and
RFC 5258 lists such names with \\NonExistent \\Subscribed, which a column of
the mailbox row cannot express. Existing subscribed flags are carried over.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 21:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('subscriptions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=1024), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('account_id', 'name')
    )
    op.execute("INSERT INTO subscriptions (account_id, name) "
               "SELECT account_id, name FROM mailboxes WHERE subscribed")
    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.drop_column('subscribed')


def downgrade() -> None:
    with op.batch_alter_table('mailboxes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('subscribed', sa.Boolean(), nullable=False, server_default=sa.false()))
    # Subscriptions without a mailbox cannot be kept by the old schema.
    op.execute("UPDATE mailboxes SET subscribed = "
               "EXISTS (SELECT 1 FROM subscriptions WHERE subscriptions.account_id = mailboxes.account_id "
               "AND subscriptions.name = mailboxes.name)")
    op.drop_table('subscriptions')
