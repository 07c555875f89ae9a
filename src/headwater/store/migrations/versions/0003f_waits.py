"""waits: parked http steps (poll and callback) that survive a server restart

Revision ID: 0003f
Revises: 0003a
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003f'
down_revision = '0003a'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'waits',
        sa.Column('token', sa.String(length=64), nullable=False),
        sa.Column('run_id', sa.String(length=40), nullable=False),
        sa.Column('step_id', sa.String(length=200), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('spec', sa.JSON(), nullable=False),
        sa.Column('result', sa.JSON(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('due_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('deadline', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_status', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('token'),
    )
    op.create_index('ix_waits_status_due', 'waits', ['status', 'due_at'], unique=False)
    op.create_index('ix_waits_run', 'waits', ['run_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_waits_run', table_name='waits')
    op.drop_index('ix_waits_status_due', table_name='waits')
    op.drop_table('waits')
