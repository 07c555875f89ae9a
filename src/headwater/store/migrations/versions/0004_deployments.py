"""Deployments: the code versions and triggers ``headwater deploy`` recorded per pipeline

Revision ID: 0004
Revises: 0003h
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003h'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'deployments',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('pipeline', sa.String(length=200), nullable=False),
        sa.Column('env', sa.String(length=100), nullable=True),
        sa.Column('code_version', sa.String(length=64), nullable=True),
        sa.Column('files', sa.JSON(), nullable=False),
        sa.Column('triggers', sa.JSON(), nullable=False),
        sa.Column('removed', sa.Boolean(), nullable=False),
        sa.Column('deployed_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_deployments_pipeline', 'deployments', ['pipeline', 'id'])


def downgrade() -> None:
    op.drop_index('ix_deployments_pipeline', table_name='deployments')
    op.drop_table('deployments')
